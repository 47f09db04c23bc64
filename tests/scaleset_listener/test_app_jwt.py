import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scaleset_listener.auth import AppJWTSigner, load_app_private_key, token_expiry
from scaleset_listener.errors import ConfigError, ProtocolError

NOW = 1_800_000_000.0


def rsa_pem(fmt: serialization.PrivateFormat) -> tuple[str, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return pem.decode(), key


@pytest.mark.parametrize(
    ("fmt", "header"),
    [
        (serialization.PrivateFormat.TraditionalOpenSSL, "BEGIN RSA PRIVATE KEY"),
        (serialization.PrivateFormat.PKCS8, "BEGIN PRIVATE KEY"),
    ],
)
def test_app_jwt_is_rs256_backdated_and_short_lived_for_pkcs1_and_pkcs8(
    fmt: serialization.PrivateFormat, header: str
) -> None:
    pem, key = rsa_pem(fmt)
    assert header in pem
    token = AppJWTSigner("123456", pem, clock=lambda: NOW).mint()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    claims = jwt.decode(
        token,
        key.public_key(),
        algorithms=["RS256"],
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {"iat": int(NOW - 60), "exp": int(NOW - 60 + 540), "iss": "123456"}
    # GitHub refuses App JWTs that live longer than ten minutes.
    assert claims["exp"] - claims["iat"] <= 600


def test_an_unreadable_key_is_a_config_error_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="GITHUB_APP_PRIVATE_KEY"):
        load_app_private_key(
            "-----BEGIN RSA PRIVATE KEY-----\nnot a key\n-----END RSA PRIVATE KEY-----"
        )


def test_a_non_rsa_key_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ConfigError, match="RSA"):
        load_app_private_key(pem)


def test_the_signer_repr_shows_no_key() -> None:
    pem, _ = rsa_pem(serialization.PrivateFormat.PKCS8)
    assert "PRIVATE" not in repr(AppJWTSigner("1", pem))


def test_admin_token_expiry_is_read_without_verifying_the_signature() -> None:
    token = jwt.encode({"exp": 1234}, "someone-elses-secret-of-32-bytes!", algorithm="HS256")
    assert token_expiry(token) == 1234.0


@pytest.mark.parametrize("token", ["opaque", jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256")])
def test_admin_tokens_without_a_readable_exp_are_a_protocol_error(token: str) -> None:
    with pytest.raises(ProtocolError):
        token_expiry(token)

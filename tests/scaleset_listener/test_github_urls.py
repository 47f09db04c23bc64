import pytest

from scaleset_listener.errors import InvalidConfigURL
from scaleset_listener.github_urls import Scope, parse_github_url


@pytest.mark.parametrize(
    ("url", "scope", "owner", "repository", "api_url"),
    [
        ("https://github.com/acme", Scope.ORGANIZATION, "acme", "", "https://api.github.com"),
        ("https://github.com/acme/", Scope.ORGANIZATION, "acme", "", "https://api.github.com"),
        (
            "https://www.github.com/acme/app",
            Scope.REPOSITORY,
            "acme",
            "app",
            "https://api.github.com",
        ),
        (
            "https://github.com/enterprises/big",
            Scope.ENTERPRISE,
            "big",
            "",
            "https://api.github.com",
        ),
        (
            "https://github.com/Enterprises/big",
            Scope.ENTERPRISE,
            "big",
            "",
            "https://api.github.com",
        ),
        (
            "https://ghes.example.com/acme/app",
            Scope.REPOSITORY,
            "acme",
            "app",
            "https://ghes.example.com/api/v3",
        ),
        (
            "https://ghes.example.com:8443/acme",
            Scope.ORGANIZATION,
            "acme",
            "",
            "https://ghes.example.com:8443/api/v3",
        ),
        (
            "https://tenant.ghe.com/acme",
            Scope.ORGANIZATION,
            "acme",
            "",
            "https://api.tenant.ghe.com",
        ),
        (
            "https://TENANT.GHE.COM/acme",
            Scope.ORGANIZATION,
            "acme",
            "",
            "https://api.tenant.ghe.com",
        ),
        (
            "http://127.0.0.1:8080/acme",
            Scope.ORGANIZATION,
            "acme",
            "",
            "http://127.0.0.1:8080/api/v3",
        ),
        (
            "http://github.localhost/acme",
            Scope.ORGANIZATION,
            "acme",
            "",
            "http://api.github.localhost",
        ),
        (
            "http://ghes.lab/enterprises/e1",
            Scope.ENTERPRISE,
            "e1",
            "",
            "http://ghes.lab/api/v3",
        ),
    ],
)
def test_config_urls_map_to_scope_and_api_base(
    url: str, scope: Scope, owner: str, repository: str, api_url: str
) -> None:
    target = parse_github_url(url)
    assert (target.scope, target.owner, target.repository, target.api_url) == (
        scope,
        owner,
        repository,
        api_url,
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com",
        "https://github.com/",
        "https://github.com/a/b/c",
        "ftp://github.com/acme",
        "github.com/acme",
        "",
    ],
)
def test_urls_that_name_no_scope_are_refused(url: str) -> None:
    with pytest.raises(InvalidConfigURL):
        parse_github_url(url)


def test_explicit_api_url_overrides_the_derived_one() -> None:
    target = parse_github_url("https://github.com/acme", "http://127.0.0.1:9/api/")
    assert target.api_url == "http://127.0.0.1:9/api"


def test_config_url_is_kept_without_surrounding_slashes() -> None:
    assert parse_github_url("https://github.com/acme/app/").config_url == (
        "https://github.com/acme/app"
    )


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://github.com/acme", "/orgs/acme/actions/runners/registration-token"),
        ("https://github.com/acme/app", "/repos/acme/app/actions/runners/registration-token"),
        (
            "https://github.com/enterprises/big",
            "/enterprises/big/actions/runners/registration-token",
        ),
    ],
)
def test_registration_token_path_follows_the_scope(url: str, path: str) -> None:
    assert parse_github_url(url).registration_token_path == path

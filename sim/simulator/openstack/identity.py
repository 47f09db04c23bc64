"""Keystone v3: version discovery, password and application-credential tokens, the catalog."""

from __future__ import annotations

from typing import Any

from simulator.openstack.model import (
    JSON,
    ApiError,
    AppCredential,
    Project,
    Token,
    User,
    iso_micro_z,
    stable_hex,
)
from simulator.openstack.state import Cloud
from simulator.openstack.web import Ctx, Reply, Route, route

AUTH_REQUIRED = "The request you have made requires authentication."
# Keystone's role ids are random; ours are stable so tests can compare them.
ROLE_IDS = {name: stable_hex("role:" + name) for name in ("member", "reader", "admin")}


def version_doc(cloud: Cloud) -> JSON:
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{cloud.base_url}/identity/v3/"}],
        "media-types": [
            {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
        ],
    }


def versions(ctx: Ctx) -> Reply:
    # Keystone answers its unversioned root with 300 Multiple Choices.
    return Reply.json(300, {"versions": {"values": [version_doc(ctx.cloud)]}})


def version(ctx: Ctx) -> Reply:
    return Reply.json(200, {"version": version_doc(ctx.cloud)})


def catalog(cloud: Cloud, project: Project) -> list[JSON]:
    base = cloud.base_url
    region = cloud.config.region
    entries = (
        ("identity", "keystone", f"{base}/identity"),
        ("compute", "nova", f"{base}/compute/v2.1"),
        ("image", "glance", f"{base}/image"),
        ("network", "neutron", f"{base}/network"),
        ("volumev3", "cinderv3", f"{base}/volume/v3/{project.id}"),
        ("block-storage", "cinder", f"{base}/volume/v3/{project.id}"),
    )
    return [
        {
            "id": stable_hex("service:" + name),
            "type": service_type,
            "name": name,
            "endpoints": [
                {
                    "id": stable_hex(f"endpoint:{name}:{interface}"),
                    "interface": interface,
                    "region": region,
                    "region_id": region,
                    "url": url,
                }
                for interface in ("public", "internal", "admin")
            ],
        }
        for service_type, name, url in entries
    ]


def token_body(cloud: Cloud, token: Token) -> JSON:
    user = token.user
    body: JSON = {
        "methods": token.methods,
        "user": {
            "domain": {"id": user.domain.id, "name": user.domain.name},
            "id": user.id,
            "name": user.name,
            "password_expires_at": None,
        },
        "audit_ids": [token.audit_id],
        "expires_at": iso_micro_z(token.expires_at),
        "issued_at": iso_micro_z(token.issued_at),
    }
    if token.project is not None:
        project = token.project
        body["project"] = {
            "domain": {"id": project.domain.id, "name": project.domain.name},
            "id": project.id,
            "name": project.name,
        }
        body["is_domain"] = False
        body["roles"] = [{"id": ROLE_IDS[r], "name": r} for r in token.roles]
        body["catalog"] = catalog(cloud, project)
    if token.app_credential is not None:
        body["application_credential"] = {
            "id": token.app_credential.id,
            "name": token.app_credential.name,
            "restricted": True,
        }
    return {"token": body}


def _unauthorized() -> ApiError:
    return ApiError(401, AUTH_REQUIRED)


def _bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def _matches_domain(ref: Any, domain_id: str, domain_name: str) -> bool:
    if not isinstance(ref, dict):
        return False
    if "id" in ref:
        return bool(ref["id"] == domain_id)
    return bool(ref.get("name") == domain_name)


def _password_user(cloud: Cloud, password: Any) -> User:
    if not isinstance(password, dict) or not isinstance(password.get("user"), dict):
        raise _bad_request("Invalid input for field 'identity/password/user': None is not valid")
    ref = password["user"]
    user = cloud.user
    if "id" in ref:
        if ref["id"] != user.id:
            raise _unauthorized()
    elif "name" in ref:
        if "domain" not in ref:
            raise _bad_request("Expecting to find domain in user. The server could not comply")
        if ref["name"] != user.name or not _matches_domain(
            ref["domain"], user.domain.id, user.domain.name
        ):
            raise _unauthorized()
    else:
        raise _bad_request("Expecting to find id or name in user.")
    if ref.get("password") != user.password:
        raise _unauthorized()
    return user


def _scope_project(cloud: Cloud, scope: Any) -> Project | None:
    if scope is None or scope == "unscoped":
        return None
    if not isinstance(scope, dict) or not isinstance(scope.get("project"), dict):
        # Domain and system scopes are not modelled: this user has no role there.
        raise _unauthorized()
    ref = scope["project"]
    project = cloud.project
    if "id" in ref:
        if ref["id"] != project.id:
            raise _unauthorized()
        return project
    if ref.get("name") != project.name or not _matches_domain(
        ref.get("domain"), project.domain.id, project.domain.name
    ):
        raise _unauthorized()
    return project


def _app_credential(cloud: Cloud, ref: Any) -> AppCredential:
    if not isinstance(ref, dict) or "secret" not in ref:
        raise _bad_request(
            "Invalid input for field 'identity/application_credential': "
            "'secret' is a required property"
        )
    cred = cloud.app_credential
    if "id" in ref:
        if ref["id"] != cred.id:
            raise _unauthorized()
    elif "name" in ref:
        user_ref = ref.get("user")
        if not isinstance(user_ref, dict):
            raise _bad_request(
                "Could not find user for application credential: a name needs a user"
            )
        if "id" in user_ref:
            user_ok = user_ref["id"] == cred.user.id
        else:
            user_ok = user_ref.get("name") == cred.user.name and _matches_domain(
                user_ref.get("domain"), cred.user.domain.id, cred.user.domain.name
            )
        if ref["name"] != cred.name or not user_ok:
            raise _unauthorized()
    else:
        raise _bad_request("Expecting to find id or name in application_credential.")
    if ref["secret"] != cred.secret:
        raise _unauthorized()
    return cred


def issue(ctx: Ctx) -> Reply:
    body = ctx.json()
    auth = body.get("auth") if isinstance(body, dict) else None
    identity = auth.get("identity") if isinstance(auth, dict) else None
    if not isinstance(auth, dict) or not isinstance(identity, dict):
        raise _bad_request("Invalid input for field 'identity': 'identity' is a required property")
    methods = identity.get("methods")
    if not isinstance(methods, list) or not methods:
        raise _bad_request("Invalid input for field 'identity': 'methods' is a required property")
    cloud = ctx.cloud
    if methods == ["application_credential"]:
        if auth.get("scope") is not None:
            raise ApiError(401, "Application credentials cannot request a scope.")
        cred = _app_credential(cloud, identity.get("application_credential"))
        token = cloud.issue_token(cred.user, cred.project, ["application_credential"], cred)
    elif methods == ["password"]:
        user = _password_user(cloud, identity.get("password"))
        project = _scope_project(cloud, auth.get("scope"))
        token = cloud.issue_token(user, project, ["password"])
    elif methods == ["token"]:
        ref = identity.get("token")
        old = cloud.valid_token(ref.get("id") if isinstance(ref, dict) else None)
        if old is None:
            raise _unauthorized()
        project = _scope_project(cloud, auth.get("scope"))
        token = cloud.issue_token(old.user, project, ["token", *old.methods])
    else:
        raise _unauthorized()
    return Reply.json(201, token_body(cloud, token), {"X-Subject-Token": token.id})


def validate(ctx: Ctx) -> Reply:
    subject = ctx.cloud.valid_token(ctx.headers.get("x-subject-token"))
    if subject is None:
        raise ApiError(404, f"Could not find token: {ctx.headers.get('x-subject-token', '')}.")
    return Reply.json(200, token_body(ctx.cloud, subject), {"X-Subject-Token": subject.id})


def revoke(ctx: Ctx) -> Reply:
    subject_id = ctx.headers.get("x-subject-token", "")
    if ctx.cloud.tokens.pop(subject_id, None) is None:
        raise ApiError(404, f"Could not find token: {subject_id}.")
    return Reply.empty(204)


def routes() -> list[Route]:
    s = "identity"
    return [
        route("GET", "/identity", "identity.versions", versions, s, auth=False),
        route("GET", "/identity/v3", "identity.version", version, s, auth=False),
        route("POST", "/identity/v3/auth/tokens", "identity.tokens.issue", issue, s, auth=False),
        route("GET", "/identity/v3/auth/tokens", "identity.tokens.validate", validate, s),
        route("DELETE", "/identity/v3/auth/tokens", "identity.tokens.revoke", revoke, s),
    ]

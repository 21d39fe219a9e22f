"""Tenant scope and permission helpers, named after the original backend's access module."""

from __future__ import annotations

from dataclasses import dataclass

from common.auth import Principal
from common.errors import PermissionDeniedError


def assert_authenticated_tenant_user(principal: Principal) -> Principal:
    """A caller bound to an organization or with global access (`assertAuthenticatedTenantUser`)."""
    if principal.organization_id is None and not principal.global_access:
        raise PermissionDeniedError("caller belongs to no organization", reason="NO_ORGANIZATION")
    return principal


def require_user_id(principal: Principal) -> str:
    """The caller's user id (`requireUserId`)."""
    return principal.user_id


def get_campus_id(principal: Principal) -> str | None:
    """The caller's campus, if any (`getCampusId`)."""
    return principal.campus_id


def get_organization_id_or_global(principal: Principal) -> str | None:
    """The organization to scope by; None for global access (`getOrganizationIdOrGlobal`)."""
    if principal.global_access:
        return None
    assert_authenticated_tenant_user(principal)
    return principal.organization_id


def require_organization_id(principal: Principal) -> str:
    """The organization a new row belongs to; a caller without one cannot write tenant rows."""
    if principal.organization_id is None:
        raise PermissionDeniedError(
            "this operation needs a caller bound to an organization", reason="NO_ORGANIZATION"
        )
    return principal.organization_id


def require_permission(principal: Principal, permission: str) -> None:
    """Role permissions ∪ custom permissions must include `permission`."""
    if not principal.has_permission(permission):
        raise PermissionDeniedError(
            f"missing permission {permission}",
            reason="MISSING_PERMISSION",
            metadata={"permission": permission},
        )


@dataclass(frozen=True, slots=True)
class TenantScope:
    """The rows a caller may reach, decided once per call from its principal: every statement
    a repository runs starts from it (see `common.repository`)."""

    principal: Principal
    # None for a global-access caller: every organization is readable.
    organization_id: str | None

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def global_access(self) -> bool:
        return self.organization_id is None

    @property
    def campus_id(self) -> str | None:
        return self.principal.campus_id

    def writable_organization(self) -> str:
        """The organization a new row belongs to (the caller's own); PERMISSION_DENIED for a
        caller without one, in both services alike."""
        return require_organization_id(self.principal)


def tenant_scope(principal: Principal) -> TenantScope:
    """The caller's scope; PERMISSION_DENIED for a caller bound to no organization and
    without global access (`assertAuthenticatedTenantUser`)."""
    return TenantScope(principal, get_organization_id_or_global(principal))

"""Authentication at the gRPC edge: each call's bearer token verified, its `Principal` bound."""

from __future__ import annotations

from collections.abc import Collection

from common.auth import TokenVerifier, bearer_token, bind_principal
from common.handlers import Around, Context, Handler, WrappingInterceptor, service_of

PUBLIC_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)


class AuthInterceptor(WrappingInterceptor):
    """Verifies the bearer token and binds the caller's `Principal` for the call; the public
    services (health, reflection) are served without one."""

    def __init__(
        self, verifier: TokenVerifier, public_services: Collection[str] = PUBLIC_SERVICES
    ) -> None:
        super().__init__()
        self._verifier = verifier
        self._public = frozenset(public_services)

    def around(self, method: str, handler: Handler) -> Around | None:
        return None if service_of(method) in self._public else self

    async def enter(self, context: Context) -> None:
        token = bearer_token(context.invocation_metadata())
        bind_principal(self._verifier.verify(token))

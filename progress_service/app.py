"""How the progress service plugs into the common server bootstrap."""

from __future__ import annotations

from pathlib import Path

from grpc import aio
from progress.v1 import progress_pb2, progress_pb2_grpc

from common.config import Settings
from common.db import Database
from common.pagetoken import PageTokens
from common.server import ServiceDefinition
from progress_service.limits import response_bounds
from progress_service.repository import REQUEST_IDS
from progress_service.service import UserProgressService
from progress_service.servicer import UserProgressServicer

SERVICE_NAME = progress_pb2.DESCRIPTOR.services_by_name["UserProgressService"].full_name


def register(server: aio.Server, db: Database, settings: Settings) -> None:
    service = UserProgressService(db, settings.limits, PageTokens.from_settings(settings))
    progress_pb2_grpc.add_UserProgressServiceServicer_to_server(
        UserProgressServicer(service), server
    )


DEFINITION = ServiceDefinition(
    name="progress",
    domain="progress.v1",
    default_addr="127.0.0.1:50051",
    service_names=(SERVICE_NAME,),
    register=register,
    migrations_dir=Path(__file__).parent / "migrations",
    version_table="alembic_version_progress",
    app_grants={"user_progress": "SELECT, INSERT, UPDATE, DELETE"},
    request_ids=(REQUEST_IDS,),
    response_bounds=response_bounds,
)

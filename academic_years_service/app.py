"""How the academic years service plugs into the common server bootstrap."""

from __future__ import annotations

from pathlib import Path

from academic_years.v1 import academic_years_pb2, academic_years_pb2_grpc
from grpc import aio

from academic_years_service.limits import response_bounds
from academic_years_service.repository import REQUEST_IDS
from academic_years_service.service import AcademicYearsService
from academic_years_service.servicer import AcademicYearsServicer
from common.config import Settings
from common.db import Database
from common.pagetoken import PageTokens
from common.server import ServiceDefinition

SERVICE_NAME = academic_years_pb2.DESCRIPTOR.services_by_name["AcademicYearsService"].full_name


def register(server: aio.Server, db: Database, settings: Settings) -> None:
    service = AcademicYearsService(db, settings.limits, PageTokens.from_settings(settings))
    academic_years_pb2_grpc.add_AcademicYearsServiceServicer_to_server(
        AcademicYearsServicer(service), server
    )


DEFINITION = ServiceDefinition(
    name="academic_years",
    domain="academic_years.v1",
    default_addr="127.0.0.1:50052",
    service_names=(SERVICE_NAME,),
    register=register,
    migrations_dir=Path(__file__).parent / "migrations",
    version_table="alembic_version_academic_years",
    # The reference tables belong to other parts of the system: read only.
    app_grants={
        "academic_years": "SELECT, INSERT, UPDATE, DELETE",
        "organizations": "SELECT",
        "classes": "SELECT",
        "timetables": "SELECT",
    },
    request_ids=(REQUEST_IDS,),
    response_bounds=response_bounds,
)

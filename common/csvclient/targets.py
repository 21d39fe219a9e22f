"""What `school-csv` can move: each service's CSV RPCs, request types and default address."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from academic_years.v1 import academic_years_pb2, academic_years_pb2_grpc
from grpc import aio
from progress.v1 import progress_pb2, progress_pb2_grpc


@dataclass(frozen=True, slots=True)
class Target:
    """One service's CSV import and export, as the command line names it."""

    name: str
    default_addr: str
    export_request: type[Any]  # the export's filter message, filled from --filter JSON
    importer: Callable[[aio.Channel], Any]  # channel -> stream-unary import callable
    watcher: Callable[[aio.Channel], Any]  # channel -> the import reporting its progress
    exporter: Callable[[aio.Channel], Any]  # channel -> unary-stream export callable


def _progress_import(channel: aio.Channel) -> Any:
    return progress_pb2_grpc.UserProgressServiceStub(channel).ImportUserProgressCsv


def _progress_watch(channel: aio.Channel) -> Any:
    return progress_pb2_grpc.UserProgressServiceStub(channel).ImportUserProgressCsvWithProgress


def _progress_export(channel: aio.Channel) -> Any:
    return progress_pb2_grpc.UserProgressServiceStub(channel).ExportUserProgressCsv


def _years_import(channel: aio.Channel) -> Any:
    return academic_years_pb2_grpc.AcademicYearsServiceStub(channel).ImportAcademicYearsCsv


def _years_watch(channel: aio.Channel) -> Any:
    return academic_years_pb2_grpc.AcademicYearsServiceStub(
        channel
    ).ImportAcademicYearsCsvWithProgress


def _years_export(channel: aio.Channel) -> Any:
    return academic_years_pb2_grpc.AcademicYearsServiceStub(channel).ExportAcademicYearsCsv


TARGETS = {
    "progress": Target(
        "progress",
        "127.0.0.1:50051",
        progress_pb2.ExportUserProgressCsvRequest,
        _progress_import,
        _progress_watch,
        _progress_export,
    ),
    "academic-years": Target(
        "academic-years",
        "127.0.0.1:50052",
        academic_years_pb2.ListAcademicYearsRequest,
        _years_import,
        _years_watch,
        _years_export,
    ),
}

Chunks = AsyncIterator[bytes]

"""The academic_years.v1 wire contract: JSON names and HTTP routes a transcoding gateway uses."""

from __future__ import annotations

import pytest
from academic_years.v1 import academic_years_pb2 as pb
from google.api import annotations_pb2
from google.protobuf import json_format

ROUTES = {
    "CreateAcademicYear": ("post", "/api/academic_years", "*"),
    "UpdateAcademicYear": ("put", "/api/academic_years/{id}", "*"),
    "DeleteAcademicYear": ("delete", "/api/academic_years/{id}", ""),
    "BatchDeleteAcademicYears": ("post", "/api/academic_years/deleteByIds", "*"),
    "GetAcademicYear": ("get", "/api/academic_years/{id}", ""),
    "ListAcademicYears": ("get", "/api/academic_years", ""),
    "CountAcademicYears": ("get", "/api/academic_years/count", ""),
    "AutocompleteAcademicYears": ("get", "/api/academic_years/autocomplete", ""),
}


@pytest.mark.parametrize("method", ROUTES)
def test_each_rpc_maps_to_the_original_route(method: str) -> None:
    service = pb.DESCRIPTOR.services_by_name["AcademicYearsService"]
    rule = service.methods_by_name[method].GetOptions().Extensions[annotations_pb2.http]
    verb, path, body = ROUTES[method]
    assert (rule.WhichOneof("pattern"), getattr(rule, verb), rule.body) == (verb, path, body)


def test_academic_year_json_names() -> None:
    year = pb.AcademicYear(
        id="i",
        name="n",
        start_date="2024-09-01",
        end_date="2025-06-30",
        current=True,
        organization_id="o",
        created_by_id="c",
        updated_by_id="u",
        organization=pb.Reference(id="o", name="org"),
        classes_academic_year=[pb.Reference(id="k")],
        timetables_academic_year=[pb.Reference(id="t")],
    )
    year.created_at.FromSeconds(0)
    year.updated_at.FromSeconds(0)
    year.deleted_at.FromSeconds(0)
    assert set(json_format.MessageToDict(year)) == {
        "id",
        "name",
        "start_date",
        "end_date",
        "current",
        "organizationId",
        "createdById",
        "updatedById",
        "createdAt",
        "updatedAt",
        "deletedAt",
        "organization",
        "classes_academic_year",
        "timetables_academic_year",
    }


def test_filter_and_response_json_names() -> None:
    request = json_format.ParseDict(
        {
            "calendarStart": "2024-01-01",
            "calendarEnd": "2024-12-31",
            "start_dateRange": ["2024-01-01", ""],
            "end_dateRange": ["", "2024-12-31"],
            "createdAtRange": ["2024-01-01"],
            "organization": "a|b",
            "field": "name",
            "sort": "asc",
        },
        pb.ListAcademicYearsRequest(),
    )
    assert list(request.start_date_range) == ["2024-01-01", ""]
    assert list(request.end_date_range) == ["", "2024-12-31"]
    assert list(request.created_at_range) == ["2024-01-01"]
    assert request.calendar_start == "2024-01-01" and request.calendar_end == "2024-12-31"
    data = json_format.MessageToDict(pb.AcademicYearInput(start_date="x", organization_id="o"))
    assert data == {"start_date": "x", "organizationId": "o"}
    deleted = json_format.MessageToDict(pb.BatchDeleteAcademicYearsResponse(deleted_count=2))
    assert deleted == {"deletedCount": 2}

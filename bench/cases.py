"""The calls each case sends: pre-serialised requests from seeded generators."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from academic_years.v1 import academic_years_pb2 as pb_ay
from progress.v1 import progress_pb2

from bench import data
from bench.load import Call, Metadata
from common.token import mint

SECRET = "bench-secret-" + "s" * 40
PROGRESS = "/progress.v1.UserProgressService/"
ACADEMIC_YEARS = "/academic_years.v1.AcademicYearsService/"
AY_PERMISSIONS = ["READ_ACADEMIC_YEARS"]


@dataclass
class Identities:
    """Per-user call metadata: the bearer token for the services, plain ids for the baseline."""

    org_of: Callable[[int], str] = data.user_org_id
    permissions: list[str] = field(default_factory=list)
    metadata: dict[int, Metadata] = field(default_factory=dict)
    global_access: bool = False  # tokens of global-access callers (no organization)

    def of(self, user: int) -> Metadata:
        found = self.metadata.get(user)
        if found is None:
            uid, org = data.user_id(user), self.org_of(user)
            token = mint(
                SECRET,
                sub=uid,
                org=None if self.global_access else org,
                global_access=self.global_access,
                permissions=self.permissions,
                ttl_seconds=6 * 3600,
            )
            found = (
                ("authorization", f"Bearer {token}"),
                ("x-bench-org", org),
                ("x-bench-user", uid),
            )
            self.metadata[user] = found
        return found


CallBuilder = Callable[[int, int], list[Call]]


def list_calls(ids: Identities, users: int) -> CallBuilder:
    payload = progress_pb2.ListUserProgressRequest(
        progress_type="sign_learned", limit=10
    ).SerializeToString()

    def build(_run: int, count: int) -> list[Call]:
        rng = random.Random(7)
        return [
            Call(PROGRESS + "ListUserProgress", payload, ids.of(rng.randrange(users)))
            for _ in range(count)
        ]

    return build


def list_skip_calls(ids: Identities, users: int) -> CallBuilder:
    """`list_calls` with skip_count: the page alone."""
    payload = progress_pb2.ListUserProgressRequest(
        progress_type="sign_learned", limit=10, skip_count=True
    ).SerializeToString()

    def build(_run: int, count: int) -> list[Call]:
        rng = random.Random(7)
        return [
            Call(PROGRESS + "ListUserProgress", payload, ids.of(rng.randrange(users)))
            for _ in range(count)
        ]

    return build


def upsert_calls(
    ids: Identities, users: int, items: int, *, request_ids: bool = False
) -> CallBuilder:
    """Random items over many users; each run gets its own item names, so every target sees
    the same mix of inserts and updates. With `request_ids`, every call carries a new request
    id (each is a first call: its claim and its answer are written with the row)."""

    def build(run: int, count: int) -> list[Call]:
        rng = random.Random(11)
        calls = []
        for _ in range(count):
            request = progress_pb2.UpsertUserProgressRequest(
                data=progress_pb2.UserProgressInput(
                    progress_type="sign_learned",
                    item_id=f"run{run}-item-{rng.randrange(items)}",
                    value="learned",
                    score=rng.randrange(100),
                ),
                request_id=str(uuid.uuid4()) if request_ids else "",
            )
            calls.append(
                Call(
                    PROGRESS + "UpsertUserProgress",
                    request.SerializeToString(),
                    ids.of(rng.randrange(users)),
                )
            )
        return calls

    return build


def ay_list_calls(ids: Identities) -> CallBuilder:
    """A name filter that matches about one year in ninety, first page, with its count."""

    def build(_run: int, count: int) -> list[Call]:
        rng = random.Random(13)
        calls = []
        for _ in range(count):
            request = pb_ay.ListAcademicYearsRequest(
                name=f"year {rng.randrange(10, 100)}", limit=10
            )
            calls.append(
                Call(
                    ACADEMIC_YEARS + "ListAcademicYears",
                    request.SerializeToString(),
                    ids.of(rng.randrange(100)),
                )
            )
        return calls

    return build


def ay_get_calls(ids: Identities, with_refs: int) -> CallBuilder:
    def build(_run: int, count: int) -> list[Call]:
        rng = random.Random(17)
        calls = []
        for _ in range(count):
            year = data.ay_year_id(0, rng.randrange(with_refs))
            calls.append(
                Call(
                    ACADEMIC_YEARS + "GetAcademicYear",
                    pb_ay.GetAcademicYearRequest(id=year).SerializeToString(),
                    ids.of(rng.randrange(100)),
                )
            )
        return calls

    return build


def repeat_calls(method: str, request: Any, metadata: Metadata) -> CallBuilder:
    """One caller sending the same request (a page of a deep list, a global count)."""
    payload = request.SerializeToString()

    def build(_run: int, count: int) -> list[Call]:
        return [Call(method, payload, metadata)] * count

    return build


def deep_page(ids: Identities, limit: int, **paging: Any) -> CallBuilder:
    """A page of the deep caller's list, the count skipped (it is the same for every page)."""
    request = progress_pb2.ListUserProgressRequest(
        progress_type="sign_learned", limit=limit, skip_count=True, **paging
    )
    return repeat_calls(PROGRESS + "ListUserProgress", request, ids.of(data.DEEP_USER))


def global_years(ids: Identities, method: str, **fields: Any) -> CallBuilder:
    """A global-access caller's List or Count over every organization's years."""
    return repeat_calls(
        ACADEMIC_YEARS + method, pb_ay.ListAcademicYearsRequest(**fields), ids.of(0)
    )

"""Unit tests of the progress servicer's translation, with a fake service behind it.

grpcio-testing's server harness drives synchronous servicers only; these servicers are asyncio
coroutines, so the tests call them directly with a bound principal and a fake service layer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2
from progress.v1 import progress_pb2 as pb

from common.auth import Principal, bind_principal
from common.idempotency import Once, RequestKey, Stored
from progress_service.domain import Page, UserProgress, UserProgressInput
from progress_service.servicer import UserProgressServicer
from tests.support.callers import new_uuid

pytestmark = pytest.mark.asyncio

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
PRINCIPAL = Principal(new_uuid(), new_uuid(), None, False, frozenset())


def _record(**overrides: Any) -> UserProgress:
    values: dict[str, Any] = {
        "id": new_uuid(),
        "progress_type": "zone_checkin",
        "item_id": "green",
        "value": None,
        "score": None,
        "metadata": None,
        "organization_id": PRINCIPAL.organization_id,
        "campus_id": None,
        "user_id": PRINCIPAL.user_id,
        "created_at": WHEN,
        "updated_at": WHEN,
    }
    values.update(overrides)
    return UserProgress(**values)


class FakeService:
    def __init__(self, record: UserProgress, stored: Stored | None = None) -> None:
        self.record = record
        self.stored = stored  # what a replayed upsert answers
        self.calls: list[tuple[str, Any]] = []
        self.request_ids: list[RequestKey | None] = []
        self.digests: list[bytes] = []

    async def upsert(
        self, principal: Principal, data: UserProgressInput, once: Once[Any, Any]
    ) -> UserProgress | Stored:
        self.calls.append(("upsert", (principal, data)))
        self.request_ids.append(once.key)
        self.digests.append(await once.digest())
        return self.stored or self.record

    async def list(self, principal: Principal, *args: Any) -> Page:
        self.calls.append(("list", (principal, *args)))
        return Page([self.record, self.record], 7, "next")

    async def delete_by_item(self, principal: Principal, progress_type: str, item_id: str) -> int:
        self.calls.append(("delete", (principal, progress_type, item_id)))
        return 1


def _servicer(
    record: UserProgress, stored: Stored | None = None
) -> tuple[UserProgressServicer, FakeService]:
    fake = FakeService(record, stored)
    bind_principal(PRINCIPAL)
    return UserProgressServicer(fake), fake  # type: ignore[arg-type]


async def test_upsert_passes_presence_through_and_renders_every_field() -> None:
    meta = struct_pb2.Value()
    json_format.ParseDict({"a": [1, "b"]}, meta)
    record = _record(value="", score=0, metadata={"a": [1, "b"]}, campus_id=new_uuid())
    servicer, fake = _servicer(record)
    request = pb.UpsertUserProgressRequest(
        data=pb.UserProgressInput(
            progress_type="zone_checkin", item_id=" x ", score=0, metadata=meta
        )
    )
    reply = await servicer.UpsertUserProgress(request, None)  # type: ignore[arg-type]
    [(_, (principal, data))] = fake.calls
    assert principal is PRINCIPAL
    assert data == UserProgressInput("zone_checkin", " x ", None, 0, {"a": [1, "b"]})
    assert reply.HasField("value") and reply.value == ""
    assert reply.HasField("score") and reply.score == 0
    assert json_format.MessageToDict(reply.metadata) == {"a": [1, "b"]}
    assert reply.campus_id == record.campus_id
    assert reply.created_at.ToDatetime(dt.UTC) == WHEN


async def test_absent_optionals_stay_absent_on_the_wire() -> None:
    servicer, fake = _servicer(_record())
    request = pb.UpsertUserProgressRequest(
        data=pb.UserProgressInput(progress_type="sign_learned", item_id="a")
    )
    reply = await servicer.UpsertUserProgress(request, None)  # type: ignore[arg-type]
    assert fake.calls[0][1][1] == UserProgressInput("sign_learned", "a", None, None, None)
    for field in ("value", "score", "metadata", "campus_id"):
        assert not reply.HasField(field)
    assert json_format.MessageToDict(reply)["progress_type"] == "zone_checkin"


async def test_upsert_hands_its_request_id_down_and_answers_a_stored_reply_as_it_was() -> None:
    kept = pb.UserProgress(id=new_uuid(), item_id="first", value="as stored")
    servicer, fake = _servicer(_record(), Stored(kept.SerializeToString()))
    request_id = new_uuid().upper()
    request = pb.UpsertUserProgressRequest(
        data=pb.UserProgressInput(progress_type="sign_learned", item_id="a"),
        request_id=request_id,
    )
    reply = await servicer.UpsertUserProgress(request, None)  # type: ignore[arg-type]
    assert reply == kept
    [key] = fake.request_ids
    assert key is not None and (key.method, key.request_id) == (
        "UpsertUserProgress",
        request_id.lower(),
    )
    # The digest is of the request: another request under the same id has another one.
    other = pb.UpsertUserProgressRequest(data=request.data, request_id=request_id)
    other.data.item_id = "b"
    await servicer.UpsertUserProgress(other, None)  # type: ignore[arg-type]
    await servicer.UpsertUserProgress(request, None)  # type: ignore[arg-type]
    digests = fake.digests
    assert digests[0] != digests[1] and digests[0] == digests[2]
    request.request_id = ""
    await servicer.UpsertUserProgress(request, None)  # type: ignore[arg-type]
    assert fake.request_ids[-1] is None


async def test_list_and_delete_translate_arguments_and_results() -> None:
    servicer, fake = _servicer(_record())
    listed = await servicer.ListUserProgress(
        pb.ListUserProgressRequest(
            progress_type="sign_learned", limit=5, page=2, page_token="t", skip_count=True
        ),
        None,  # type: ignore[arg-type]
    )
    assert fake.calls[-1] == ("list", (PRINCIPAL, "sign_learned", None, 5, 2, "t", True))
    assert listed.count == 7 and len(listed.rows) == 2 and listed.next_page_token == "next"
    await servicer.ListUserProgress(
        pb.ListUserProgressRequest(progress_type="sign_learned", item_id=""),
        None,  # type: ignore[arg-type]
    )
    assert fake.calls[-1][1][2] == ""  # present-but-empty is passed on, not dropped
    deleted = await servicer.DeleteUserProgressByItem(
        pb.DeleteUserProgressByItemRequest(progress_type="sign_learned", item_id="a"),
        None,  # type: ignore[arg-type]
    )
    assert deleted.deleted_count == 1
    assert json_format.MessageToDict(deleted) == {"deletedCount": 1}

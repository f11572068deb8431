"""Reviews: written by buyers a settled request entitles, answered once by the provider."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from infer import audit
from infer.accounts.principal import Principal
from infer.audit import ClientInfo
from infer.db import Database
from infer.errors import BadInput, Conflict, Forbidden, NotFound
from infer.models import Review, UsageRecord, User, utcnow
from infer.security.text import check_text

MAX_COMMENT = 2000
MAX_REPLY = 2000
MAX_PAGE = 50


@dataclass(frozen=True)
class ReviewPage:
    """Reviews newest first, and the cursor of the last one when more follow."""

    reviews: list[Review]
    end_cursor: str | None


def _check_rating(rating: int) -> int:
    if not 1 <= rating <= 5:
        raise BadInput("a rating is 1 to 5", param="rating")
    return rating


async def _entitling_request(
    session: AsyncSession, *, buyer_id: uuid.UUID, provider_id: uuid.UUID
) -> str | None:
    """The buyer's latest completed request served by this provider, if any."""
    found = await session.exec(
        select(UsageRecord.request_id)
        .where(
            UsageRecord.buyer_id == buyer_id,
            UsageRecord.operator_id == provider_id,
            UsageRecord.status == "completed",
        )
        .order_by(col(UsageRecord.created_at).desc())
        .limit(1)
    )
    return found.first()


async def create_review(
    db: Database,
    *,
    principal: Principal,
    provider_id: uuid.UUID,
    rating: int,
    comment: str | None,
    client: ClientInfo,
) -> Review:
    """One review per buyer per provider, verified by a settled request with that provider."""
    _check_rating(rating)
    comment = check_text(comment, param="comment", what="a comment", max_length=MAX_COMMENT)
    if provider_id == principal.user_id:
        raise Forbidden("you cannot review yourself")
    async with db.session() as session:
        provider = await session.get(User, provider_id)
        request_id = await _entitling_request(
            session, buyer_id=principal.user_id, provider_id=provider_id
        )
    if provider is None:
        raise NotFound("no such provider", param="providerId")
    if request_id is None:
        raise Forbidden("only buyers with a settled request with this provider may review it")
    now = utcnow()
    review = Review(
        provider_id=provider_id,
        reviewer_id=principal.user_id,
        rating=rating,
        comment=comment,
        request_id=request_id,
        created_at=now,
        updated_at=now,
    )
    try:
        async with db.transaction() as session:
            session.add(review)
            audit.record(
                session,
                action="review.created",
                client=client,
                actor_id=principal.user_id,
                target=f"provider:{provider_id}",
                details={"rating": rating},
            )
    except IntegrityError as exc:
        raise Conflict("you have already reviewed this provider", param="providerId") from exc
    return review


async def _own(session: AsyncSession, review_id: uuid.UUID, principal: Principal) -> Review:
    review = await session.get(Review, review_id)
    if review is None:
        raise NotFound("no such review", param="id")
    if review.reviewer_id != principal.user_id:
        raise Forbidden("you may change only your own reviews")
    return review


async def update_review(
    db: Database,
    *,
    principal: Principal,
    review_id: uuid.UUID,
    rating: int | None,
    comment: str | None,
    client: ClientInfo,
) -> Review:
    """Change one's own review; an omitted field keeps its value, an empty comment clears it."""
    if rating is not None:
        _check_rating(rating)
    text = check_text(comment, param="comment", what="a comment", max_length=MAX_COMMENT)
    async with db.transaction() as session:
        review = await _own(session, review_id, principal)
        if rating is not None:
            review.rating = rating
        if comment is not None:
            review.comment = text
        review.updated_at = utcnow()
        session.add(review)
        audit.record(
            session,
            action="review.updated",
            client=client,
            actor_id=principal.user_id,
            target=f"review:{review_id}",
            details={"rating": review.rating},
        )
    return review


async def delete_review(
    db: Database, *, principal: Principal, review_id: uuid.UUID, client: ClientInfo
) -> None:
    async with db.transaction() as session:
        review = await _own(session, review_id, principal)
        await session.delete(review)
        audit.record(
            session,
            action="review.deleted",
            client=client,
            actor_id=principal.user_id,
            target=f"provider:{review.provider_id}",
        )


async def reply_to_review(
    db: Database, *, principal: Principal, review_id: uuid.UUID, reply: str, client: ClientInfo
) -> Review:
    """The reviewed provider's one answer; a second one is a conflict."""
    text = check_text(reply, param="reply", what="a reply", max_length=MAX_REPLY)
    if text is None:
        raise BadInput("a reply may not be empty", param="reply")
    async with db.transaction() as session:
        review = await session.get(Review, review_id)
        if review is None:
            raise NotFound("no such review", param="id")
        if review.provider_id != principal.user_id:
            raise Forbidden("only the reviewed provider may reply")
        now = utcnow()
        # Conditional on no reply yet, so that two racing replies cannot both land.
        result = await session.exec(
            sa.update(Review)
            .where(col(Review.id) == review_id, col(Review.reply).is_(None))
            .values(reply=text, replied_at=now)
        )
        if result.rowcount != 1:
            raise Conflict("this review already has your reply", param="id")
        audit.record(
            session,
            action="review.replied",
            client=client,
            actor_id=principal.user_id,
            target=f"review:{review_id}",
        )
        await session.refresh(review)
    return review


def encode_cursor(review: Review) -> str:
    raw = f"{review.created_at.isoformat()}|{review.id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        stamp, review_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError("a cursor's time is UTC")
        return when.astimezone(UTC), uuid.UUID(review_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeError) as exc:
        raise BadInput("not a cursor from this list", param="after") from exc


def check_page(first: int, after: str | None) -> tuple[datetime, uuid.UUID] | None:
    """Refuse a page size out of range or a cursor this list did not give; the cursor's key."""
    if not 1 <= first <= MAX_PAGE:
        raise BadInput(f"first is 1 to {MAX_PAGE}", param="first")
    return None if after is None else _decode_cursor(after)


async def page_of_reviews(
    session: AsyncSession, *, provider_id: uuid.UUID, first: int, after: str | None
) -> ReviewPage:
    """A provider's reviews newest first, `first` of them after the cursor."""
    start = check_page(first, after)
    query = select(Review).where(Review.provider_id == provider_id)
    if start is not None:
        stamp, last_id = start
        query = query.where(
            sa.or_(
                col(Review.created_at) < stamp,
                sa.and_(col(Review.created_at) == stamp, col(Review.id) < last_id),
            )
        )
    rows = list(
        await session.exec(
            query.order_by(col(Review.created_at).desc(), col(Review.id).desc()).limit(first + 1)
        )
    )
    more = len(rows) > first
    rows = rows[:first]
    return ReviewPage(reviews=rows, end_cursor=encode_cursor(rows[-1]) if more else None)


async def first_pages(
    session: AsyncSession, *, provider_ids: Sequence[uuid.UUID], first: int
) -> dict[uuid.UUID, ReviewPage]:
    """The first page of each provider's reviews, with one windowed query for them all."""
    check_page(first, None)
    rank = (
        sa.func.row_number()
        .over(
            partition_by=col(Review.provider_id),
            order_by=(col(Review.created_at).desc(), col(Review.id).desc()),
        )
        .label("rank")
    )
    ranked = select(Review, rank).where(col(Review.provider_id).in_(list(provider_ids))).subquery()
    reviewed = aliased(Review, ranked)
    rows = await session.exec(
        select(reviewed)
        .where(ranked.c.rank <= first + 1)
        .order_by(ranked.c.provider_id, ranked.c.rank)
    )
    grouped: dict[uuid.UUID, list[Review]] = {pid: [] for pid in provider_ids}
    for review in rows:
        grouped[review.provider_id].append(review)
    return {
        pid: ReviewPage(
            reviews=found[:first],
            end_cursor=encode_cursor(found[first - 1]) if len(found) > first else None,
        )
        for pid, found in grouped.items()
    }


async def rating_figures(
    session: AsyncSession, provider_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[int]]:
    """Per provider, how many reviews gave 1, 2, 3, 4 and 5 stars (counted from the rows)."""
    found: dict[uuid.UUID, list[int]] = {pid: [0] * 5 for pid in provider_ids}
    rows = await session.exec(
        select(Review.provider_id, Review.rating, sa.func.count())
        .where(col(Review.provider_id).in_(list(provider_ids)))
        .group_by(col(Review.provider_id), col(Review.rating))
    )
    for provider_id, rating, count in rows:
        found[provider_id][rating - 1] = int(count)
    return found


def average(distribution: Sequence[int]) -> float | None:
    count = sum(distribution)
    if not count:
        return None
    return round(sum(star * n for star, n in enumerate(distribution, start=1)) / count, 2)


async def reviews_by(
    session: AsyncSession, *, keys: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> dict[tuple[uuid.UUID, uuid.UUID], Review]:
    """Each (reviewer, provider) pair's review, where one exists, in one query."""
    reviewers = {reviewer for reviewer, _ in keys}
    providers = {provider for _, provider in keys}
    rows = await session.exec(
        select(Review).where(
            col(Review.reviewer_id).in_(list(reviewers)),
            col(Review.provider_id).in_(list(providers)),
        )
    )
    wanted = set(keys)
    found = {(row.reviewer_id, row.provider_id): row for row in rows}
    return {key: review for key, review in found.items() if key in wanted}

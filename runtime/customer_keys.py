"""Customers' history key seeds: what the codec (`runtime.codec`) mixes with the key ring's
key to seal the payloads of one customer's runs, so that deleting one row makes all of
them unreadable (crypto-shredding) without rewriting any history.

A customer's seed is 32 random bytes in the ``customer_keys`` table, under the customer's
pseudonym (`engine.pseudonyms.customer_ref`), never the id. `CustomerKeyStore.seed` reads
it, and makes it on the first payload sealed for that customer (``create=True``): insert
or ignore, so two processes sealing at once agree on one seed; never for a pseudonym in
``erased_customers`` (`CustomerErased`): an erased customer's payload gets no new key.

**Caching, and what it means after an erasure.** Seeds are cached in each process, at
most `CACHE_SIZE` of them (least recently used go first), each for `CACHE_TTL` seconds
from when it was read (reading it again does not extend that). Erasure deletes the row and
calls `CustomerKeyStore.forget` in its own process; any other process (a worker, another
API) may still hold the seed in memory, and so open and seal that customer's payloads,
for up to `CACHE_TTL` seconds afterwards. The pseudonym key is cached for as long.

One store per database and process (`shared_store`): the data converter of
`runtime.temporal.connect`, the codec server and the erasure use the same, so
``forget`` reaches every cache in the process. It makes its engine on first use
(`engine.database.make_engine`), so building a converter costs nothing until a
customer-keyed payload is sealed or opened; database work runs in a thread
(`asyncio.to_thread`). No seed is ever logged or put in an error message.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import DateTime, LargeBinary, Table, exists, literal, select
from sqlalchemy.engine import Engine

from engine.database import CustomerKey, ErasedCustomer, dialect_insert, make_engine
from engine.pseudonyms import customer_ref, pseudonym_key
from engine.timestamps import utcnow

__all__ = [
    "CACHE_SIZE",
    "CACHE_TTL",
    "CUSTOMER_KEYS",
    "SEED_BYTES",
    "CustomerErased",
    "CustomerKeyStore",
    "forget_everywhere",
    "shared_store",
]

CUSTOMER_KEYS: Table = CustomerKey.__table__  # type: ignore[attr-defined]
ERASED_CUSTOMERS: Table = ErasedCustomer.__table__  # type: ignore[attr-defined]

SEED_BYTES = 32
CACHE_SIZE = 10_000
"""Seeds one process keeps in memory at most."""
CACHE_TTL = 60.0
"""Seconds a process keeps a seed (and the pseudonym key) it read: how long after an
erasure another process may still open that customer's payloads."""


class CustomerErased(RuntimeError):
    """A payload for an erased customer: no new history key is made for them. The message
    names the pseudonym only."""


class _Forgets(Protocol):
    def forget(self, ref: str) -> None: ...

    def clear(self) -> None: ...


class _TtlLru:
    """``ref -> value``, at most ``size`` entries, each for ``ttl`` seconds from when it
    was put (a read does not extend it); thread-safe."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]) -> None:
        self._size = size
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(ref)
            if entry is None:
                return None
            expires, value = entry
            if self._clock() >= expires:
                del self._entries[ref]
                return None
            self._entries.move_to_end(ref)
            return value

    def put(self, ref: str, value: bytes) -> None:
        with self._lock:
            self._entries[ref] = (self._clock() + self._ttl, value)
            self._entries.move_to_end(ref)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def pop(self, ref: str) -> None:
        with self._lock:
            self._entries.pop(ref, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class CustomerKeyStore:
    """The ``customer_keys`` table of one database, with a bounded, expiring cache.

    ``source``: the database URL (the engine is made with `make_engine` on first use and
    disposed by `close`), or a function returning an engine (the caller's, not disposed
    here)."""

    def __init__(
        self,
        source: str | Callable[[], Engine],
        *,
        cache_size: int = CACHE_SIZE,
        ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._ttl = ttl
        self._clock = clock
        self._seeds = _TtlLru(cache_size, ttl, clock)
        self._pseudonym_key: tuple[float, bytes] | None = None
        self._followers: weakref.WeakSet[_Forgets] = weakref.WeakSet()

    def __repr__(self) -> str:  # never a seed, nor a URL's password
        where = "a database URL" if isinstance(self._source, str) else "an engine"
        return f"CustomerKeyStore({where}, cached={len(self._seeds)})"

    @property
    def engine_made(self) -> bool:
        """Whether this store has made or fetched its engine yet (it does on first use)."""
        return self._engine is not None

    def engine(self) -> Engine:
        """The store's engine, made (or fetched) on first use."""
        with self._engine_lock:
            if self._engine is None:
                source = self._source
                self._engine = make_engine(source) if isinstance(source, str) else source()
            return self._engine

    def close(self) -> None:
        """Dispose of the engine this store made from a URL (a later use makes another)."""
        with self._engine_lock:
            engine, self._engine = self._engine, None
        if engine is not None and isinstance(self._source, str):
            engine.dispose()

    # ------------------------------------------------------------------ seeds

    async def seed(self, ref: str, *, create: bool) -> bytes | None:
        """The seed of the customer whose pseudonym is ``ref``; None when there is none and
        ``create`` is false (the customer was erased, or never had a payload sealed).
        With ``create`` a missing seed is made, unless the customer was erased
        (`CustomerErased`)."""
        cached = self._seeds.get(ref)
        if cached is not None:
            return cached
        found = await asyncio.to_thread(self.seed_blocking, ref, create=create)
        return found

    def seed_blocking(self, ref: str, *, create: bool) -> bytes | None:
        """`seed`, in the calling thread (for code that is not async)."""
        cached = self._seeds.get(ref)
        if cached is not None:
            return cached
        found = self._read(ref)
        if found is None and create:
            found = self._create(ref)
        if found is not None:
            self._seeds.put(ref, found)
        return found

    def forget(self, ref: str) -> None:
        """Drop ``ref``'s seed from this process's caches (what erasure calls after
        deleting the row; other processes drop theirs within `CACHE_TTL`)."""
        self._seeds.pop(ref)
        for follower in list(self._followers):
            follower.forget(ref)

    def clear(self) -> None:
        """Drop every cached seed and the cached pseudonym key (a database recreated or
        restored at the same address: the tests on PostgreSQL)."""
        self._seeds.clear()
        self._pseudonym_key = None
        for follower in list(self._followers):
            follower.clear()

    def follow(self, follower: _Forgets) -> None:
        """Have ``follower.forget(ref)`` called on each `forget` (a codec's cache of keys
        derived from seeds); held weakly."""
        self._followers.add(follower)

    def _read(self, ref: str) -> bytes | None:
        with self.engine().connect() as connection:
            found = connection.execute(
                select(CUSTOMER_KEYS.c.seed).where(CUSTOMER_KEYS.c.ref == ref)
            ).scalar()
        return bytes(found) if found is not None else None

    def _create(self, ref: str) -> bytes:
        engine = self.engine()
        # One statement: insert unless the row exists (another process made it first) or
        # the customer is in erased_customers.
        values = select(
            literal(ref),
            literal(secrets.token_bytes(SEED_BYTES), LargeBinary),
            literal(utcnow(), DateTime),
        ).where(~exists().where(ERASED_CUSTOMERS.c.ref == ref))
        statement = (
            dialect_insert(engine.dialect.name)(CUSTOMER_KEYS)
            .from_select(["ref", "seed", "created_at"], values)
            .on_conflict_do_nothing(index_elements=["ref"])
        )
        with engine.begin() as connection:
            connection.execute(statement)
        found = self._read(ref)
        if found is None:
            raise CustomerErased(
                f"customer {ref} was erased: no new history key is made for them, so no "
                "payload of theirs can be sealed"
            )
        return found

    # ------------------------------------------------------------------ pseudonyms

    async def ref_for_customer(self, customer_id: str) -> str:
        """The customer's pseudonym (`engine.pseudonyms.customer_ref`), the pseudonym key
        read through this store's engine and cached for `CACHE_TTL` seconds."""
        key = self._cached_pseudonym_key()
        if key is None:
            key = await asyncio.to_thread(self._read_pseudonym_key)
        return customer_ref(customer_id, key)

    def ref_for_customer_blocking(self, customer_id: str) -> str:
        """`ref_for_customer`, in the calling thread."""
        key = self._cached_pseudonym_key() or self._read_pseudonym_key()
        return customer_ref(customer_id, key)

    def _cached_pseudonym_key(self) -> bytes | None:
        cached = self._pseudonym_key
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        return None

    def _read_pseudonym_key(self) -> bytes:
        key = pseudonym_key(self.engine())
        self._pseudonym_key = (self._clock() + self._ttl, key)
        return key


_SHARED: dict[str, CustomerKeyStore] = {}
_SHARED_LOCK = threading.Lock()


def shared_store(database_url: str) -> CustomerKeyStore:
    """This process's store for ``database_url`` (made on first call, its engine on first
    use): what the data converter, the codec server and the erasure share."""
    with _SHARED_LOCK:
        store = _SHARED.get(database_url)
        if store is None:
            store = _SHARED[database_url] = CustomerKeyStore(database_url)
        return store


def forget_everywhere(ref: str) -> None:
    """Drop ``ref``'s seed from every store of this process (`service.erasure`, after it
    deleted the row: this process stops opening that customer's payloads at once; others
    within the cache's time)."""
    with _SHARED_LOCK:
        stores = list(_SHARED.values())
    for store in stores:
        store.forget(ref)

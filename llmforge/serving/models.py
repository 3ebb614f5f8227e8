"""The models one server answers for, by name: each loaded on its first request, with its own engine worker, and
the least recently used unloaded when loading one more would pass serve.max_loaded or serve.memory_limit_mb.

A model is in use from the moment a request picks it until its response has been sent; only idle models are
unloaded, so a request that needs room waits for one to finish rather than cutting another answer short.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmforge.serving.generation import EngineWorker
from llmforge.serving.target import Target, weights_bytes

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Slot:
    """One model this server serves, loaded or not."""

    target: Target
    size: int  # bytes of weights, from the files
    pinned: bool = False  # handed in already loaded: the caller owns it, so it is never unloaded here
    engine: object | None = None
    worker: EngineWorker | None = None
    loading: bool = False
    users: int = 0  # requests holding it
    last_used: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def occupies(self) -> bool:
        return self.engine is not None or self.loading


class ModelLoadFailed(Exception):
    pass


class Models:
    def __init__(self, targets: list[Target], load: Callable[[Target], object], *, max_queue: int,
                 max_loaded: int | None = None, memory_limit: int | None = None, loaded: object | None = None):  # fmt: skip
        """`load` turns a Target into an engine; `loaded` is an engine already loaded for targets[0]."""
        self._load = load
        self.max_queue = max_queue
        self.max_loaded = max_loaded
        self.memory_limit = memory_limit
        self.slots = {t.name: Slot(t, weights_bytes(t)) for t in targets}
        self.default = targets[0].name
        self._cond = threading.Condition()
        self.loads: dict[str, int] = {name: 0 for name in self.slots}
        self.unloads: dict[str, int] = {name: 0 for name in self.slots}
        if loaded is not None:
            slot = self.slots.get(getattr(loaded, "name", None)) or self.slots[self.default]
            slot.engine, slot.pinned = loaded, True
            slot.worker = EngineWorker(loaded, max_queue=max_queue)
        self._started = False

    def start(self) -> None:
        """Start the workers of the models loaded already (the server's start-up)."""
        with self._cond:
            self._started = True
            for slot in self.slots.values():
                if slot.worker is not None:
                    slot.worker.start()

    def stop(self) -> None:
        with self._cond:
            slots = [s for s in self.slots.values() if s.engine is not None]
        for slot in slots:
            self._unload(slot)

    def loaded(self) -> list[str]:
        with self._cond:
            return [name for name, slot in self.slots.items() if slot.engine is not None]

    def held_now(self, name: str) -> Slot | None:
        """The model `name` held for one request if it is loaded; None when that would mean waiting."""
        slot = self.slots[name]
        with self._cond:
            if slot.engine is None or slot.loading:
                return None
            slot.users += 1
            slot.last_used = time.monotonic()
            return slot

    def acquire(self, name: str) -> Slot:
        """The model `name`, loaded, held for one request until `release`. Blocks while it loads, or while
        every model that would have to make room for it is busy; loads it at most once however many ask."""
        slot = self.slots[name]
        with self._cond:
            while True:
                if slot.engine is not None and not slot.loading:  # (loading and loaded: being unloaded)
                    slot.users += 1
                    slot.last_used = time.monotonic()
                    return slot
                if not slot.loading:
                    victims = self._room_for(slot)
                    if victims is not None:
                        slot.loading = True
                        break
                self._cond.wait()
        try:
            for victim in victims:
                self._unload(victim)
            engine = self._load(slot.target)
            worker = EngineWorker(engine, max_queue=self.max_queue)
            worker.start()
        except BaseException as exc:
            with self._cond:
                slot.loading = False
                self._cond.notify_all()
            log.exception("loading %s failed", slot.name)
            raise ModelLoadFailed(f"{slot.name}: {exc}") from exc
        with self._cond:
            slot.engine, slot.worker, slot.loading = engine, worker, False
            slot.users += 1
            slot.last_used = time.monotonic()
            self.loads[slot.name] += 1
            self._cond.notify_all()
        return slot

    def release(self, slot: Slot) -> None:
        with self._cond:
            slot.users -= 1
            slot.last_used = time.monotonic()
            self._cond.notify_all()

    def _room_for(self, slot: Slot) -> list[Slot] | None:
        """The idle models to unload (least recently used first) so that `slot` fits; None while busy ones are in
        the way. Called with the lock held; the victims are marked so that no other request takes them."""
        held = [s for s in self.slots.values() if s.occupies]
        victims: list[Slot] = []
        candidates = sorted((s for s in held if not s.pinned and not s.loading and s.users == 0),
                            key=lambda s: s.last_used)  # fmt: skip

        def fits() -> bool:
            kept = [s for s in held if s not in victims]
            if self.max_loaded is not None and len(kept) + 1 > self.max_loaded:
                return False
            return self.memory_limit is None or sum(s.size for s in kept) + slot.size <= self.memory_limit

        while not fits():
            if not candidates:
                return None
            victims.append(candidates.pop(0))
        for victim in victims:  # unloading happens outside the lock; until then nobody may pick them up
            victim.loading = True
        return victims

    def _unload(self, slot: Slot) -> None:
        worker, engine = slot.worker, slot.engine
        if worker is not None and (self._started or not slot.pinned):  # a lazily loaded one started as it loaded
            worker.stop()
        if engine is not None and not slot.pinned:
            engine.close()
        with self._cond:
            if not slot.pinned:
                slot.engine = slot.worker = None
                self.unloads[slot.name] += 1
            slot.loading = False
            self._cond.notify_all()
        # a transformers model lives as long as something refers to it: let the memory go now, not at some later
        # collection
        gc.collect()

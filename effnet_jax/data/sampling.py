"""Index orders: which example the pipeline reads at each position of the stream.

Training streams are infinite: position i is (epoch, pos) = divmod(i, epoch_len), and
each epoch's order is a fresh permutation (after class balancing) drawn from
(seed, shard, epoch) alone. So the element at any position can be computed without
replaying the ones before it, which is what makes iterator state a few integers.
"""

import sys

import numpy as np

BALANCE = ("none", "oversample", "undersample")


class TrainOrder:
    """Infinite sequence of (example, epoch, pos) for one shard, reshuffled every epoch."""

    def __init__(self, labels: np.ndarray, balance: str, seed: int, shard_index: int = 0):
        if balance not in BALANCE:
            raise ValueError(f"data.balance={balance!r}: expected one of {BALANCE}")
        labels = np.asarray(labels)
        if len(labels) == 0:
            raise ValueError("the training split (this shard) is empty: nothing to sample")
        self._by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self._n = len(labels)
        self.balance = balance if len(self._by_class) > 1 else "none"
        self.seed = int(seed)
        self.shard_index = int(shard_index)
        counts = [len(m) for m in self._by_class]
        self.epoch_len = {
            "none": self._n,
            "oversample": max(counts) * len(counts),
            "undersample": min(counts) * len(counts),
        }[self.balance]
        self._cached = (None, None)

    def __len__(self):
        return sys.maxsize  # infinite stream; grain's batch/iter only ever index into it

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Example indices (into the shard's labels) in the order epoch `epoch` visits them."""
        if self._cached[0] == epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, self.shard_index, epoch, 0xE70C])
        if self.balance == "none":
            members = np.arange(self._n)
        elif self.balance == "oversample":
            target = max(len(m) for m in self._by_class)
            # Whole copies of the minority, topped up by a without-replacement draw, so
            # every minority example appears floor(target/n) or one more times per epoch.
            members = np.concatenate(
                [
                    np.concatenate([np.tile(m, target // len(m)), rng.choice(m, target % len(m), replace=False)])
                    for m in self._by_class
                ]
            )
        else:
            target = min(len(m) for m in self._by_class)
            members = np.concatenate([rng.choice(m, target, replace=False) for m in self._by_class])
        order = members[rng.permutation(len(members))]
        self._cached = (epoch, order)
        return order

    def __getitem__(self, i: int):
        epoch, pos = divmod(int(i), self.epoch_len)
        return int(self.epoch_order(epoch)[pos]), epoch, pos


class EvalOrder:
    """One pass over a shard's examples, padded with -1 to `padded_len`."""

    def __init__(self, num_examples: int, padded_len: int):
        self._n = int(num_examples)
        self._len = int(padded_len)

    def __len__(self):
        return self._len

    def __getitem__(self, i: int):
        i = int(i)
        return (i if i < self._n else -1), 0, i


class IndexBatches:
    """Batches of (example index, label) along a TrainOrder: the resident path's training iterator.

    Batch k holds stream positions k*B .. k*B + B - 1, exactly the examples of the grain
    path's batch k, and the state is grain's own ({'next_index': k}), so a checkpoint of
    either path resumes the other.
    """

    def __init__(self, order: TrainOrder, labels: np.ndarray, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        self.order, self.labels, self.batch_size = order, np.asarray(labels, np.int32), int(batch_size)
        self.next_index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        first = self.next_index * self.batch_size
        index = np.array([self.order[p][0] for p in range(first, first + self.batch_size)], np.int32)
        self.next_index += 1
        return {"index": index, "label": self.labels[index]}

    def get_state(self) -> dict:
        return {"next_index": self.next_index}

    def set_state(self, state: dict):
        if not isinstance(state, dict) or not isinstance(state.get("next_index"), int):
            raise ValueError(
                f"the checkpoint's training data state {state!r} is not {{'next_index': <int>}} (saved with "
                "data.num_workers > 0?): resume it with --config.data.resident=off"
            )
        self.next_index = state["next_index"]

    def close(self):
        pass

"""SecAgg+ (Bell et al. 2020; SecAgg, Bonawitz et al. 2017): the client and server halves of one round.

A round, as in Flower's `SecAggPlusWorkflow` and `secaggplus_mod`, with Flower's primitives (ECDH
key pairs and agreement, Fernet share encryption, Shamir sharing over PyCryptodome); only the mask
generator is privfl's own (`masking.mask`, AES-CTR; Flower's folds its seed to 32 bits):

  advertise   each client makes two ECDH key pairs: (sk1, pk1) for pairwise masks, (sk2, pk2) to
              encrypt shares; sends (pk1, pk2).
  share keys  the server sends each client its neighbours' public keys (a ring of num_shares, itself
              included); the client draws a self-mask seed b, Shamir-splits b and sk1 t-of-n among
              the neighbours and sends each share pair encrypted under ECDH(sk2, pk2_j).
  masked      the server forwards the encrypted shares; the client sends
              y = x + PRG(b) + sum_j s_ij PRG(ECDH(sk1, pk1_j))  mod 2^bits,  s_ij = +1 if i > j else -1,
              over the neighbours whose shares it received.
  unmask      the server names, per client, which neighbours survived and which dropped; the client
              sends the b-share of each survivor and the sk1-share of each dropped one, and never both
              for the same neighbour (`UnmaskRefused`): a server that claims a client dropped after it
              sent y learns sk1 (its pairwise masks) but never b, so y stays masked.
  server      sums the y's of the survivors, rebuilds each survivor's b and each dropped client's sk1
              from >= t shares, removes PRG(b) and the dropped clients' pairwise masks.

A step with fewer than t live neighbours for some client aborts the round (`RoundAborted`), as in
the paper: the server then learns nothing of the round's inputs.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from privfl.errors import CryptoError
from privfl.fl.secure.masking import FixedPoint, mask, ring_neighbours, round_shares


class RoundAborted(CryptoError):
    """Too few clients stayed for the masks to be removed: the round yields no sum."""


class UnmaskRefused(CryptoError):
    """The server asked a client for both shares of one neighbour (SecAgg's one-of-two rule)."""


def _seed(shared_key: bytes) -> bytes:
    """Flower's generate_shared_key returns HKDF-SHA256 output, urlsafe-base64 (for Fernet): the 32 raw
    bytes are the mask seed."""
    return base64.urlsafe_b64decode(shared_key)


@dataclass
class ClientRound:
    """One client's secrets for one round; it never leaves the client."""

    client_id: int
    threshold: int = 0  # t, set by the server's share-keys request
    sk1: bytes = b""
    pk1: bytes = b""
    sk2: bytes = b""
    pk2: bytes = b""
    seed: bytes = b""  # b, the self-mask seed
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    seed_shares: dict[int, bytes] = field(default_factory=dict)  # shares of each neighbour's b held here
    key_shares: dict[int, bytes] = field(default_factory=dict)  # shares of each neighbour's sk1 held here
    masked_with: list[int] = field(default_factory=list)
    revealed: dict[int, str] = field(default_factory=dict)  # neighbour -> "seed" | "key"

    # --- stage 1 -------------------------------------------------------------------------------
    def advertise(self) -> tuple[bytes, bytes]:
        """Two fresh ECDH key pairs; returns (pk1, pk2)."""
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        self.sk1, self.pk1 = private_key_to_bytes(sk1), public_key_to_bytes(pk1)
        self.sk2, self.pk2 = private_key_to_bytes(sk2), public_key_to_bytes(pk2)
        return self.pk1, self.pk2

    # --- stage 2 -------------------------------------------------------------------------------
    def share_keys(self, public_keys: dict[int, tuple[bytes, bytes]], threshold: int) -> dict[int, bytes]:
        """Neighbours' (pk1, pk2), itself included, and t -> {neighbour: encrypted (b share, sk1 share)}.

        The client refuses t <= n/2 of its n neighbours: with fewer, a server could collect t b-shares
        from some neighbours and t sk1-shares from others and unmask it.
        """
        me = self.client_id
        if 2 * threshold <= len(public_keys):
            raise CryptoError(
                f"client {me}: threshold t = {threshold} of {len(public_keys)} neighbours is not a majority; "
                "refusing to share keys (a server could rebuild both of a client's secrets)"
            )
        self.threshold = int(threshold)
        if public_keys.get(me) != (self.pk1, self.pk2):
            raise CryptoError(f"client {me}: the server listed other public keys for this client")
        if len(public_keys) < self.threshold:
            raise RoundAborted(
                f"client {me}: {len(public_keys)} neighbours advertised keys, fewer than threshold "
                f"{self.threshold}"
            )
        flat = [k for pair in public_keys.values() for k in pair]
        if len(set(flat)) != len(flat):
            raise CryptoError(f"client {me}: two neighbours advertised the same public key")
        self.public_keys = dict(public_keys)
        self.seed = os.urandom(32)
        ids = sorted(public_keys)
        seed_shares = create_shares(self.seed, self.threshold, len(ids))
        key_shares = create_shares(self.sk1, self.threshold, len(ids))
        out: dict[int, bytes] = {}
        sk2 = bytes_to_private_key(self.sk2)
        for j, b_share, k_share in zip(ids, seed_shares, key_shares, strict=True):
            if j == me:
                self.seed_shares[me], self.key_shares[me] = b_share, k_share
                continue
            key = generate_shared_key(sk2, bytes_to_public_key(public_keys[j][1]))
            out[j] = encrypt(key, share_keys_plaintext_concat(me, j, b_share, k_share))
        return out

    # --- stage 3 -------------------------------------------------------------------------------
    def masked_input(self, encrypted: dict[int, bytes], encoded: np.ndarray, fixed: FixedPoint) -> np.ndarray:
        """Shares sent to this client by its live neighbours, and its encoded input -> y mod 2^bits."""
        me = self.client_id
        if len(encrypted) + 1 < self.threshold:
            raise RoundAborted(
                f"client {me}: shares came from {len(encrypted)} neighbours, fewer than threshold "
                f"{self.threshold} - 1"
            )
        sk2 = bytes_to_private_key(self.sk2)
        for src, ciphertext in encrypted.items():
            if src not in self.public_keys or src == me:
                raise CryptoError(f"client {me}: the server forwarded shares from non-neighbour {src}")
            key = generate_shared_key(sk2, bytes_to_public_key(self.public_keys[src][1]))
            actual_src, dst, b_share, k_share = share_keys_plaintext_separate(decrypt(key, ciphertext))
            if actual_src != src or dst != me:
                raise CryptoError(
                    f"client {me}: a share said {actual_src} -> {dst}, the server said {src} -> {me}"
                )
            self.seed_shares[src], self.key_shares[src] = b_share, k_share
        n = encoded.shape[0]
        y = encoded.astype(np.uint64) + mask(self.seed, n, fixed.bits)
        sk1 = bytes_to_private_key(self.sk1)
        self.masked_with = sorted(encrypted)
        for j in self.masked_with:
            pairwise = mask(
                _seed(generate_shared_key(sk1, bytes_to_public_key(self.public_keys[j][0]))), n, fixed.bits
            )
            y = y + pairwise if me > j else y - pairwise  # uint64 wraps mod 2^64; M divides it
        return fixed.reduce(y)

    # --- stage 4 -------------------------------------------------------------------------------
    def unmask(self, survivors: list[int], dropped: list[int]) -> dict[int, tuple[str, bytes]]:
        """{neighbour: ("seed", b share) if it survived, ("key", sk1 share) if it dropped}."""
        me = self.client_id
        if set(survivors) & set(dropped):
            raise UnmaskRefused(
                f"client {me}: the server named {sorted(set(survivors) & set(dropped))} both survivors "
                "and dropped"
            )
        if len(survivors) < self.threshold:
            raise RoundAborted(
                f"client {me}: {len(survivors)} neighbours survived, fewer than threshold {self.threshold}"
            )
        asked = {j: "seed" for j in survivors} | {j: "key" for j in dropped}
        for j, kind in asked.items():
            if self.revealed.get(j, kind) != kind:
                raise UnmaskRefused(
                    f"client {me}: already sent neighbour {j}'s {self.revealed[j]} share this round; "
                    f"revealing its {kind} share too would unmask its input"
                )
        out: dict[int, tuple[str, bytes]] = {}
        for j, kind in asked.items():
            shares = self.seed_shares if kind == "seed" else self.key_shares
            if j in shares:
                out[j] = (kind, shares[j])
                self.revealed[j] = kind
        return out


@dataclass
class ServerRound:
    """The server's state for one round: who is where, what it relayed, the running masked sum."""

    round_index: int
    fixed: FixedPoint
    neighbour_count: int | None  # secure.neighbours (None: every client of the round)
    threshold_fraction: float  # secure.threshold
    n_values: int
    threshold: int = 0  # t and the ring size n, fixed once the round's clients advertised
    num_shares: int = 0
    neighbours: dict[int, set[int]] = field(default_factory=dict)
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    shared: dict[int, dict[int, bytes]] = field(default_factory=dict)  # src -> {dst: ciphertext}
    masked_sum: np.ndarray | None = None
    masked_from: list[int] = field(default_factory=list)

    def _check(self, stage: str, alive: set[int]) -> None:
        """Abort when some live client has fewer than t live neighbours (itself included)."""
        for c in sorted(alive):
            live = len(self.neighbours.get(c, set()) & alive)
            if live < self.threshold:
                raise RoundAborted(
                    f"round {self.round_index}, {stage}: client {c} has {live} live neighbours, fewer than "
                    f"the threshold t = {self.threshold} ({len(alive)} of {len(self.neighbours)} clients "
                    "left); the round yields no sum"
                )

    # stage 1 -> 2
    def collect_keys(
        self, keys: dict[int, tuple[bytes, bytes]], order: list[int]
    ) -> dict[int, tuple[dict[int, tuple[bytes, bytes]], int]]:
        """Clients' (pk1, pk2) -> what each is sent: its neighbours' keys and t. `order` places them on
        the ring (the caller shuffles it; a server that places them is trusted no more than one that
        does not: a client's inputs stay hidden as long as t of its neighbours are honest)."""
        if len(keys) < 2:
            raise RoundAborted(
                f"round {self.round_index}: {len(keys)} client(s) advertised keys; a sum needs >= 2"
            )
        self.public_keys = dict(keys)
        self.num_shares, self.threshold = round_shares(
            len(keys), self.neighbour_count, self.threshold_fraction
        )
        self.neighbours = ring_neighbours([c for c in order if c in keys], self.num_shares)
        self._check("share keys", set(keys))
        return {c: ({j: keys[j] for j in self.neighbours[c]}, self.threshold) for c in keys}

    # stage 2 -> 3
    def route_shares(self, shares: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Each client's encrypted shares -> what each client receives (from live senders only)."""
        self.shared = dict(shares)
        self._check("collect shares", set(shares))
        inbox: dict[int, dict[int, bytes]] = {c: {} for c in shares}
        for src, out in shares.items():
            for dst, ciphertext in out.items():
                if dst in inbox and dst in self.neighbours.get(src, set()):
                    inbox[dst][src] = ciphertext
        return inbox

    # stage 3
    def add_masked(self, client_id: int, y: np.ndarray) -> None:
        """Add one client's masked input (mod 2^bits) to the running sum."""
        if client_id not in self.shared:
            raise CryptoError(
                f"round {self.round_index}: client {client_id} sent a masked input without shares"
            )
        if y.shape != (self.n_values,):
            raise CryptoError(
                f"round {self.round_index}: client {client_id} sent {y.shape} values, "
                f"expected {self.n_values}"
            )
        y = self.fixed.reduce(np.asarray(y, dtype=np.uint64))
        self.masked_sum = y.copy() if self.masked_sum is None else self.fixed.reduce(self.masked_sum + y)
        self.masked_from.append(client_id)

    # stage 3 -> 4
    def unmask_requests(self) -> dict[int, tuple[list[int], list[int]]]:
        """For each survivor: (its neighbours that sent masked input, its neighbours that shared keys
        but sent none). Dropped clients are asked nothing."""
        survivors = set(self.masked_from)
        self._check("masked input", survivors)
        dropped = set(self.shared) - survivors
        return {
            c: (sorted(self.neighbours[c] & survivors), sorted(self.neighbours[c] & dropped))
            for c in survivors
        }

    # stage 4
    def unmask(self, replies: dict[int, dict[int, tuple[str, bytes]]]) -> np.ndarray:
        """Survivors' shares -> the exact sum of the survivors' encoded inputs (uint64 mod 2^bits)."""
        if self.masked_sum is None:
            raise RoundAborted(f"round {self.round_index}: no client sent a masked input")
        responders = set(replies)
        self._check("unmask", responders)
        survivors = set(self.masked_from)
        dropped = set(self.shared) - survivors
        collected: dict[int, dict[str, list[bytes]]] = {}
        for sender, shares in replies.items():
            for owner, (kind, share) in shares.items():
                if owner not in self.neighbours.get(sender, set()):
                    continue
                collected.setdefault(owner, {}).setdefault(kind, []).append(share)
        total = self.masked_sum.copy()
        n, bits = self.n_values, self.fixed.bits
        for c in sorted(survivors):
            seed = self._combine(c, collected.get(c, {}).get("seed", []), "self-mask seed")
            total = total - mask(seed, n, bits)
        for d in sorted(dropped):
            sk1 = bytes_to_private_key(self._combine(d, collected.get(d, {}).get("key", []), "mask key"))
            for j in sorted(survivors & self.neighbours[d]):
                if d not in self.shared or j not in self.shared[d]:
                    continue  # j never received d's shares, so it did not mask with d
                pairwise = mask(
                    _seed(generate_shared_key(sk1, bytes_to_public_key(self.public_keys[j][0]))), n, bits
                )
                total = total - pairwise if j > d else total + pairwise  # j added +m iff j > d
        return self.fixed.reduce(total)

    def _combine(self, owner: int, shares: list[bytes], what: str) -> bytes:
        if len(shares) < self.threshold:
            raise RoundAborted(
                f"round {self.round_index}: {len(shares)} shares of client {owner}'s {what} came back, fewer "
                f"than the threshold t = {self.threshold}; the round yields no sum"
            )
        try:
            return combine_shares(shares[: self.threshold])
        except ValueError as exc:
            raise CryptoError(
                f"round {self.round_index}: client {owner}'s {what} shares do not combine: {exc}"
            ) from exc

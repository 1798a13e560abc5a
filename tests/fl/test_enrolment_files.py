"""Enrolment: what a client signs, its key file, and every way a registry file is refused."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from privfl.errors import CryptoError
from privfl.fl.secure.enrolment import (
    CONTRIBUTION_DOMAIN,
    SigningKey,
    contribution_message,
    enrol_clients,
    payload_digest,
    read_registry,
    verify,
    write_registry,
)

RUN = bytes(range(16))


def test_the_signed_message_binds_domain_run_round_client_and_payload():
    digest = payload_digest(b"payload")
    assert digest == hashlib.sha256(b"payload").digest()
    message = contribution_message(RUN, 7, 3, digest)
    assert message == CONTRIBUTION_DOMAIN + RUN + struct.pack("<II", 7, 3) + digest
    others = {
        contribution_message(RUN, 8, 3, digest),
        contribution_message(RUN, 7, 4, digest),
        contribution_message(bytes(16), 7, 3, digest),
        contribution_message(RUN, 7, 3, payload_digest(b"other")),
    }
    assert message not in others and len(others) == 4


def test_the_signed_message_refuses_wrong_lengths_naming_them():
    with pytest.raises(CryptoError, match=r"^run id must be 16 bytes and digest 32, got 15, 32$"):
        contribution_message(RUN[:-1], 0, 0, bytes(32))
    with pytest.raises(CryptoError, match=r"^run id must be 16 bytes and digest 32, got 16, 31$"):
        contribution_message(RUN, 0, 0, bytes(31))


def test_keys_round_trip_through_bytes_and_files(tmp_path):
    key = SigningKey.generate()
    again = SigningKey.from_bytes(key.private_bytes())
    assert again.public_bytes() == key.public_bytes() and len(key.public_bytes()) == 32
    with pytest.raises(CryptoError, match=r"^an Ed25519 private key is 32 bytes, got 31$"):
        SigningKey.from_bytes(key.private_bytes()[:-1])
    path = tmp_path / "deep" / "client.key"
    first = SigningKey.load_or_create(path)
    assert SigningKey.load_or_create(path).public_bytes() == first.public_bytes()  # created once
    assert path.read_bytes() == first.private_bytes() and not path.with_name("client.key.tmp").exists()
    with pytest.raises(
        CryptoError, match=r"^cannot read the signing key .*missing\.key \(.+\); create it with enrolment$"
    ):
        SigningKey.load(tmp_path / "missing.key")


def test_verify_says_false_for_anything_but_the_signers_signature_of_the_message():
    key, other = SigningKey.generate(), SigningKey.generate()
    sig = key.sign(b"m")
    assert verify(key.public_bytes(), b"m", sig)
    assert verify(bytearray(key.public_bytes()), memoryview(b"m"), bytearray(sig))
    assert not verify(other.public_bytes(), b"m", sig)
    assert not verify(key.public_bytes(), b"m", sig[:-1])
    assert not verify(key.public_bytes()[:-1], b"m", sig)
    assert not verify(key.public_bytes(), b"m", bytes(64))


def test_write_registry_is_sorted_hex_format_1(tmp_path):
    keys, registry = enrol_clients([3, 1])
    assert sorted(keys) == [1, 3] and registry == {c: k.public_bytes() for c, k in keys.items()}
    write_registry(tmp_path / "r.json", registry)
    body = json.loads((tmp_path / "r.json").read_text())
    assert body == {"format": 1, "clients": {"1": registry[1].hex(), "3": registry[3].hex()}}
    assert list(body["clients"]) == ["1", "3"]
    assert read_registry(tmp_path / "r.json") == registry


def _registry(tmp_path, body) -> str:
    path = tmp_path / "reg.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    with pytest.raises(CryptoError) as info:
        read_registry(path)
    return str(info.value).replace(str(path), "REG")


def test_each_broken_registry_is_refused_naming_what_is_wrong(tmp_path):
    good = SigningKey.generate().public_bytes().hex()
    assert _registry(tmp_path, "{not json").startswith("cannot read the enrolment registry REG (")
    assert _registry(tmp_path, "{not json").endswith("); write it with privfl enrolment")
    not_registry = "REG is not a privfl enrolment registry (expected format 1 with a 'clients' table)"
    for body in ([], {"format": 2, "clients": {}}, {"format": 1}, {"format": 1, "clients": []}):
        assert _registry(tmp_path, body) == not_registry
    assert _registry(tmp_path, {"format": 1, "clients": {"x": good}}) == (
        f"REG: entry 'x': '{good}' is not a client id and hex key"
    )
    assert _registry(tmp_path, {"format": 1, "clients": {"-1": good}}) == (
        "REG: client -1 has a 32-byte key, Ed25519 keys are 32 bytes"
    )
    assert _registry(tmp_path, {"format": 1, "clients": {"2": good[:-2]}}) == (
        "REG: client 2 has a 31-byte key, Ed25519 keys are 32 bytes"
    )
    assert _registry(tmp_path, {"format": 1, "clients": {"0": good, "1": good}}) == (
        "REG: two clients share one public key; every client enrols its own key"
    )


def test_missing_registry_file_is_refused(tmp_path):
    with pytest.raises(CryptoError, match=r"^cannot read the enrolment registry .*nowhere\.json"):
        read_registry(tmp_path / "nowhere.json")


def test_keys_are_saved_into_new_nested_folders_and_beside_existing_ones(tmp_path):
    first, second = SigningKey.generate(), SigningKey.generate()
    first.save(tmp_path / "node" / "keys" / "a.key")  # folders that do not exist yet
    second.save(tmp_path / "node" / "keys" / "b.key")  # a folder that does
    assert SigningKey.load(tmp_path / "node" / "keys" / "a.key").public_bytes() == first.public_bytes()
    assert SigningKey.load(tmp_path / "node" / "keys" / "b.key").public_bytes() == second.public_bytes()

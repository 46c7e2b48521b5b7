"""`conclave simulate` as an operator uses it: exit codes, JSON, every cheat kind."""

from __future__ import annotations

import json
import pathlib
import secrets
import subprocess
import sys

import pytest

from engine.cheats import CHEATS
from engine.crypto import ecdsa
from ops.cli import main
from tests.helpers_openssl import openssl_verify

POOL = str(pathlib.Path(__file__).parent / "fixtures" / "safe_primes.json")
BASE = ["simulate", "--parties", "3", "--threshold", "2", "--security-level", "dev-2048", "--prime-pool", POOL, "--json"]


def run_cli(capsys, *args: str) -> tuple[int, dict]:
    code = main([*BASE, *args])
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_simulate_prints_a_signature_openssl_accepts(capsys):
    digest = secrets.token_hex(32)
    code, out = run_cli(capsys, "--digest", digest)
    assert code == 0
    assert out["digest"] == digest and out["signers"] == [1, 2]
    pub, r, s = bytes.fromhex(out["public_key"]), int(out["r"], 16), int(out["s"], 16)
    assert len(pub) == 33 and len(out["r"]) == len(out["s"]) == 64
    assert openssl_verify(pub, bytes.fromhex(digest), bytes.fromhex(out["der"]))
    assert ecdsa.is_low_s(s)
    assert ecdsa.recover(bytes.fromhex(digest), ecdsa.Signature(r, s, out["v"])).to_bytes() == pub
    assert set(out["timings"]) == {"keygen", "aux_info", "presign", "sign"}


def test_message_signs_its_sha256_with_chosen_signers(capsys):
    import hashlib

    code, out = run_cli(capsys, "--message", "withdraw 1 BTC", "--signers", "1,3")
    assert code == 0
    assert out["digest"] == hashlib.sha256(b"withdraw 1 BTC").hexdigest()
    assert out["signers"] == [1, 3]
    assert openssl_verify(bytes.fromhex(out["public_key"]), bytes.fromhex(out["digest"]), bytes.fromhex(out["der"]))


@pytest.mark.parametrize("kind", sorted(CHEATS))
def test_every_cheat_aborts_naming_the_cheater(capsys, kind):
    cheater = 3 if kind in ("bad-vss-share", "bad-enc-proof") else 2
    code, out = run_cli(capsys, "--digest", "11" * 32, "--cheat", f"{cheater}:{kind}")
    assert code == 3, out
    assert out["aborted"] is True
    assert out["culprits"] == [cheater]
    assert out["phase"] == CHEATS[kind][0]
    assert out["reason"] and out["messages"]


def test_list_cheats_names_every_required_kind(capsys):
    assert main(["simulate", "--list-cheats", "--json"]) == 0
    kinds = {c["kind"] for c in json.loads(capsys.readouterr().out)["cheats"]}
    assert kinds >= {
        "bad-schnorr-proof", "bad-vss-share", "equivocate-broadcast", "small-factor-modulus", "non-blum-modulus",
        "bad-ring-pedersen", "bad-enc-proof", "bad-affg-proof", "bad-logstar-proof", "bad-sigma-share",
        "replay-other-session",
    }


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--digest", "abcd"], "32 bytes"),
        (["--digest", "zz" * 32], "hex"),
        (["--digest", "11" * 32, "--message", "x"], "exactly one"),
        (["--digest", "11" * 32, "--signers", "1,2,3"], "exactly 2"),
        (["--digest", "11" * 32, "--cheat", "9:bad-enc-proof"], "parties are 1..3"),
        (["--digest", "11" * 32, "--cheat", "2:nonsense"], "unknown cheat"),
        (["--digest", "11" * 32, "--security-level", "weak"], "unknown security level"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(capsys, args, needle):
    base = ["simulate", "--parties", "3", "--threshold", "2", "--prime-pool", POOL, "--json"]
    if "--security-level" not in args:
        base += ["--security-level", "dev-2048"]
    code = main(base + args)
    captured = capsys.readouterr()
    assert code == 2
    assert needle in captured.err
    assert "error" in json.loads(captured.out)


def test_console_script_runs_as_a_process():
    proc = subprocess.run(
        [sys.executable, "-m", "ops.cli", "simulate", "--list-cheats"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "bad-sigma-share" in proc.stdout

"""Secrets, two writers, SIGTERM, pipes, damaged caches, a full disk and a YAML bomb: run as a user would.

The stand-in server (servers.py) answers instantly, so these run in seconds; the real engine's
SIGTERM trials are in test_sigterm_engine.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai.cli import main as cai_main
from harness import REPO, cli_env, generate_args, manifest_of, rows_of, run_cli, start_cli, write_prompts
from servers import StandinServer

HUMAN_PAIRS = REPO / "judging" / "data" / "human_pairs.jsonl"


def _all_text(folder: Path) -> list[tuple[str, str]]:
    return [(str(p), p.read_bytes().decode("utf-8", "replace")) for p in folder.rglob("*") if p.is_file()]


# --- 1. secrets in URLs -------------------------------------------------------------------------------------------

def test_a_secret_in_the_url_or_the_key_reaches_no_file_and_no_output(tmp_path):
    password, query_key, api_key = "pw-SECRET-7a1c", "qk-SECRET-93be", "sk-SECRET-5d20"
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    env = cli_env(OPENAI_API_KEY=api_key)
    outputs = []
    with StandinServer() as server:
        url = f"http://alice:{password}@127.0.0.1:{server.port}/v1?api-key={query_key}"
        runs = [
            generate_args(prompts, tmp_path / "r.jsonl", url, "--examples", "2"),
            ["judge", "--in", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "prefs.jsonl"), "--backend",
             "openai", "--base-url", url, "--model", "standin", "--method", "pairwise", "--keep-flagged", "--keep-duplicates"],
            ["judge", "agreement", "--pairs", str(HUMAN_PAIRS), "--limit", "3", "--backend", "openai", "--base-url",
             url, "--model", "standin", "--method", "pairwise", "--out", str(tmp_path / "agreement.json"),
             "--details", str(tmp_path / "details.jsonl")],
        ]
        for args in runs:
            done = run_cli(args, env=env)
            assert done.returncode == 0, done.stderr
            outputs += [("stdout", done.stdout), ("stderr", done.stderr)]
        assert server.requests > 0
    # An endpoint that is down: the stop message and the errors file name it, without the secrets.
    down = f"http://alice:{password}@127.0.0.1:9/v1?api-key={query_key}"
    failed = run_cli(generate_args(prompts, tmp_path / "down.jsonl", down, "--request-timeout", "1"), env=env)
    assert failed.returncode == 1 and (tmp_path / "down.jsonl.errors.jsonl").exists()
    outputs += [("stdout", failed.stdout), ("stderr", failed.stderr)]

    pairs = rows_of(tmp_path / "prefs.jsonl")
    assert pairs and {p["judge_model"] for p in pairs} == {"standin"}  # the model, not the endpoint
    written = _all_text(tmp_path)
    assert len(written) >= 10  # rows, manifests, errors, caches, report, sft, agreement and details
    for secret in (password, query_key, api_key, "alice:"):
        leaks = [name for name, text in written + outputs if secret in text]
        assert not leaks, f"{secret} found in {leaks}"


def test_redact_url_removes_user_password_query_and_fragment():
    from core.redact import redact_text, redact_url

    assert redact_url("https://u:p@host:8443/v1?key=k#frag") == "https://host:8443/v1"
    assert redact_url("http://token@[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert redact_url("http://host/v1") == "http://host/v1" and redact_url(None) is None
    assert "p@" not in redact_text("the endpoint http://u:p@h/v1?k=1 is down; also 'https://x:y@z/'")


# --- 2 and 3. one writer per output ------------------------------------------------------------------------------

def test_a_second_run_on_the_same_output_stops_at_once_naming_the_holder(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", 6)
    out = tmp_path / "out.jsonl"
    with StandinServer(hold_after=0) as held:  # the first run's requests wait until released
        first = start_cli(generate_args(prompts, out, held.base_url, concurrency=1), tmp_path / "first.log")
        try:
            deadline = time.monotonic() + 60
            while not Path(str(out) + ".lock").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            second = run_cli(generate_args(prompts, out, held.base_url))
            assert first.poll() is None  # the second run ended while the first still held the output
        finally:
            held.release()
            assert first.wait(120) == 0
    assert second.returncode == 1
    assert f"is being written by another run (pid {first.pid} on " in second.stderr
    assert "Traceback" not in second.stderr
    rows = rows_of(out)
    assert sorted(r["id"] for r in rows) == [f"p{i}" for i in range(6)]  # every row once
    assert manifest_of(out)["counts"]["rows"] == 6
    assert not Path(str(out) + ".lock").exists()


# --- 7. SIGTERM like Ctrl-C ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["generate", "judge", "run"])
def test_sigterm_lands_the_batch_in_flight_whole_writes_the_manifest_and_exits_143(tmp_path, command):
    prompts = write_prompts(tmp_path / "p.jsonl", 24)
    with StandinServer(delay=0.05) as server:
        revisions = tmp_path / "r.jsonl"
        if command == "judge":
            assert cai_main(generate_args(prompts, revisions, server.base_url)) == 0
            args = ["judge", "--in", str(revisions), "--out", str(tmp_path / "prefs.jsonl"), "--backend", "openai",
                    "--base-url", server.base_url, "--model", "standin", "--method", "pairwise", "--keep-flagged", "--keep-duplicates",
                    "--constitution", str(REPO / "principles.yaml"),
                    "--concurrency", "1", "--principles-per-pair", "3"]
            out = tmp_path / "prefs.jsonl"
        elif command == "run":
            import yaml

            recipe = tmp_path / "recipe.yaml"
            recipe.write_text(yaml.safe_dump({
                "run_dir": str(tmp_path / "run"), "constitution": str(REPO / "principles.yaml"),
                "generate": {"prompts": str(prompts), "backend": "openai", "base_url": server.base_url,
                             "model": "standin", "temperature": 0.0, "concurrency": 1}}))
            args = ["run", "--recipe", str(recipe)]
            out = tmp_path / "run" / "revisions.jsonl"
        else:
            args = generate_args(prompts, revisions, server.base_url, concurrency=1)
            out = revisions
        process = start_cli(args, tmp_path / "run.log")
        deadline = time.monotonic() + 60
        while (not out.exists() or not out.read_text().count("\n")) and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        code = process.wait(60)
    log = (tmp_path / "run.log").read_text()
    assert code == 143, log
    assert "terminated (SIGTERM): finished work is saved" in log and "Traceback" not in log
    rows = rows_of(out)  # every line is a whole row
    manifest = manifest_of(out)
    assert manifest["counts"]["stopped"] == "terminated"
    assert manifest["counts"]["pairs" if command == "judge" else "rows"] == len(rows) > 0
    assert len({row["id"] for row in rows}) == len(rows)  # no row twice
    assert not Path(str(out) + ".lock").exists()
    if command == "run":
        return  # the rest of the recipe (training) is not for the stand-in
    # The same command again resumes and finishes.
    with StandinServer() as server:
        args[args.index("--base-url") + 1] = server.base_url
        assert cai_main(args) == 0
    assert len(rows_of(out)) == 24


# --- 4. pipes and inputs read once -----------------------------------------------------------------------------------

def test_prompts_from_stdin_or_a_process_substitution_are_refused_not_skipped(tmp_path):
    with StandinServer() as server:
        args = generate_args("/dev/stdin", tmp_path / "out.jsonl", server.base_url)
        done = subprocess.run([sys.executable, "-m", "cai", *args], input='{"prompt": "hi"}\n', text=True,
                              capture_output=True, cwd=REPO, env=cli_env(), timeout=120)
        assert done.returncode == 1, done.stderr
        assert "not a regular file (a pipe, a device or a process substitution can be read only once" in done.stderr
        bash = subprocess.run(["bash", "-c", f"{sys.executable} -m cai {' '.join(generate_args('<(echo {{}})', tmp_path / 'o2.jsonl', server.base_url))}"],
                              capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=120)
        assert bash.returncode == 1 and "not a regular file" in bash.stderr, bash.stderr
        assert server.requests == 0
    assert not (tmp_path / "out.jsonl").exists()


def test_a_prompts_file_that_gives_fewer_prompts_the_second_time_is_an_error(tmp_path, monkeypatch):
    import generation.run as run

    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    real = run.iter_prompts

    def shrinking(path, limit=None):  # the file lost its last prompt between the two readings
        return (p for i, p in enumerate(real(path, limit)) if i < 3)

    monkeypatch.setattr(run, "iter_prompts", shrinking)
    with StandinServer() as server:
        with pytest.raises(Exception, match=r"gave 3 prompts on its second reading but 4 on its first"):
            run.generate(run.GenerateConfig(prompts=str(prompts), out=str(tmp_path / "o.jsonl"), backend="openai",
                                            base_url=server.base_url, model="standin", temperature=0.0,
                                            constitution=str(REPO / "principles.yaml")))


# --- 6. damaged state: cache lines skipped and redone --------------------------------------------------------------------

def test_damaged_or_hand_edited_cache_lines_are_skipped_and_redone(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    with StandinServer() as server:
        assert cai_main(generate_args(prompts, tmp_path / "r.jsonl", server.base_url)) == 0
        args = ["judge", "--in", str(tmp_path / "r.jsonl"), "--out", str(tmp_path / "prefs.jsonl"), "--backend",
                "openai", "--base-url", server.base_url, "--model", "standin", "--method", "pairwise",
                "--keep-flagged", "--keep-duplicates", "--constitution", str(REPO / "principles.yaml")]
        assert cai_main(args) == 0
        reference = rows_of(tmp_path / "prefs.jsonl")
        cache = tmp_path / "prefs.jsonl.judgements.jsonl"
        records = rows_of(cache)
        records[0]["p_first"] = "0.7"  # a string probability
        records[1]["p_first"] = 5.0  # out of range
        records[2]["p_first"] = float("nan")
        lines = [json.dumps(r) for r in records]
        lines.insert(3, "{not json")
        cache.write_text("\n".join(lines) + "\n")
        (tmp_path / "prefs.jsonl").unlink()  # the pairs are rebuilt from the cache
        capsys.readouterr()
        before = server.requests
        assert cai_main(args) == 0
        err = capsys.readouterr().err
        assert server.requests - before == 3  # only the three bad judgements were asked again
    assert "skipped 4 damaged or hand-edited line(s); what they held is redone" in err and "Traceback" not in err
    rebuilt = rows_of(tmp_path / "prefs.jsonl")
    assert [r["chosen_probability"] for r in rebuilt] == [r["chosen_probability"] for r in reference]
    assert all(0 <= r["chosen_probability"] <= 1 for r in rebuilt)


# --- 8. a full disk ---------------------------------------------------------------------------------------------------

def test_a_full_disk_ends_in_one_error_line_and_keeps_whole_batches(tmp_path, capsys):
    """A real 96 KiB tmpfs when this process may mount one (root); otherwise ENOSPC injected into the writer."""
    prompts = write_prompts(tmp_path / "p.jsonl", 40)
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)],
                             capture_output=True).returncode == 0
    try:
        with StandinServer() as server:
            args = generate_args(prompts, disk / "out.jsonl", server.base_url)
            args[args.index("--max-tokens") + 1] = "400"
            (tmp_path / "big.jsonl").write_text("".join(
                json.dumps({"id": f"b{i}", "prompt": f"{i} " + "long words " * 300}) + "\n" for i in range(40)))
            args[args.index("--prompts") + 1] = str(tmp_path / "big.jsonl")
            if mounted:
                code = cai_main(args)
            else:
                import errno

                real_fsync, calls = os.fsync, []

                def fsync(fd):
                    calls.append(fd)
                    if len(calls) > 3:
                        raise OSError(errno.ENOSPC, "No space left on device")
                    return real_fsync(fd)

                os.fsync = fsync
                try:
                    code = cai_main(args)
                finally:
                    os.fsync = real_fsync
        err = capsys.readouterr().err
        assert code == 1, err
        assert "cannot write: No space left on device; free some space" in err and "Traceback" not in err
        for row in rows_of(disk / "out.jsonl"):  # what is there is whole rows
            assert row["final_response"] is not None
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)


# --- 9. the YAML alias bomb --------------------------------------------------------------------------------------------

def test_a_500_byte_alias_bomb_is_refused_within_100_mb(tmp_path, capsys):
    import tracemalloc

    bomb = "".join(f"{x}: &{x} [{', '.join([f'*{p}' if p else 'lol'] * 9)}]\n"
                   for p, x in zip(["", *"abcdefgh"], "abcdefghi")) + "version: 1\nprinciples: [*i]\n"
    assert len(bomb.encode()) <= 500
    path = tmp_path / "principles.yaml"
    path.write_text(bomb)
    tracemalloc.start()
    code = cai_main(["validate", str(path)])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    err = capsys.readouterr().err
    assert code == 1 and "expands to more than 200,000 values through aliases" in err
    assert peak < 100 * 2**20, peak  # 9**9 values expanded would take gigabytes (the time is in bench/README.md)


# --- 10. shards: an empty shard, a part deleted or cut short while its shard runs ----------------------------------

def _shard_args(prompts: Path, folder: Path, url: str, shard: str) -> list[str]:
    return generate_args(prompts, folder, url, "--shard", shard, concurrency=1)


def test_a_shard_with_no_rows_leaves_an_empty_part_that_readers_take(tmp_path, capsys):
    from cai.status import status
    from core.shards import Shard

    prompts = write_prompts(tmp_path / "p.jsonl", 2)  # 2 prompts over 3 shards: one shard at least has none
    folder = tmp_path / "parts"
    with StandinServer() as server:
        for index in range(3):
            assert cai_main(_shard_args(prompts, folder, server.base_url, f"{index}/3")) == 0
        parts = [folder / Shard(index, 3).part_name for index in range(3)]
        assert all(part.is_file() for part in parts) and any(part.stat().st_size == 0 for part in parts)
        assert status(folder)["all_finished"] and status(folder)["rows"] == 2
        prefs = tmp_path / "prefs.jsonl"
        assert cai_main(["judge", "--in", str(folder), "--out", str(prefs), "--backend", "openai", "--base-url",
                         server.base_url, "--model", "standin", "--method", "pairwise", "--keep-flagged", "--keep-duplicates",
                         "--constitution", str(REPO / "principles.yaml")]) == 0, capsys.readouterr().err
    assert manifest_of(prefs)["counts"]["rows"] == 2


def _while_held(server: StandinServer, action) -> None:
    """Once the server holds a request (rows are on file, one is in flight), do ``action`` and release it."""
    import threading

    def act() -> None:
        deadline = time.monotonic() + 60
        while server.held < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # the rows whose replies came back are written
        action()
        server.release()

    threading.Thread(target=act, daemon=True).start()


@pytest.mark.parametrize("damage", ["deleted", "cut-short"])
def test_a_part_deleted_or_cut_short_while_its_shard_runs_is_reported_and_resumable(tmp_path, capsys, damage):
    from cai.status import status
    from core.shards import Shard

    prompts = write_prompts(tmp_path / "p.jsonl", 40)
    folder = tmp_path / "parts"
    part = folder / Shard(0, 2).part_name
    args = _shard_args(prompts, folder, "", "0/2")
    with StandinServer() as server:
        args[args.index("--base-url") + 1] = server.base_url
        server.hold(after=4 * 3)  # 4 rows of 3 calls, then a row in flight

        def harm() -> None:
            if damage == "deleted":
                part.unlink()
            else:
                os.truncate(part, part.stat().st_size - 10)  # the last row torn

        _while_held(server, harm)
        assert cai_main(args) == 1
        err = capsys.readouterr().err
        said = "deleted or replaced while this run was writing it" if damage == "deleted" else \
            "cut short while this run was writing it (from "
        assert said in err and "run the same command again" in err and "Traceback" not in err, err
        manifest = manifest_of(part)
        assert manifest["counts"]["stopped"] == "error" and manifest["counts"]["rows"] == len(rows_of(part))
        if damage == "cut-short":  # whole rows only, the torn one cut off
            assert part.read_bytes().endswith(b"\n") and len(rows_of(part)) == 3
            assert status(folder)["parts"][0]["state"].startswith("stopped (error)")
        else:
            assert not part.exists()  # not recreated empty: a reader would take it for a shard with no rows
        # The same command again repairs it: every row of the shard, each once.
        server.hold(None)
        assert cai_main(args) == 0, capsys.readouterr().err
    rows = rows_of(part)
    assert len(rows) == len({row["id"] for row in rows}) == manifest_of(part)["counts"]["prompts"]
    assert status(folder)["parts"][0]["finished"]

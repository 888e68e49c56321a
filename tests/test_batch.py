"""Batch tracing (explainer.batch): prompt inputs, bad rows, the index, resume, fsspec outputs, Ray = local, the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from safetensors.numpy import load_file

import explainer
from explainer import batch
from explainer.cli import main

STEPS = 2  # toy-model traces of 2 steps: about 0.3 s each on one CPU core
PROMPTS = ["a red circle on the left", "a blue square at the top", "a green triangle and a yellow circle"]


@pytest.fixture(scope="module")
def toy():
    pipe = explainer.load_pipeline("toy", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def files(folder: Path, sub: str) -> list[str]:
    return sorted(p.name for p in (folder / sub).iterdir())


# ---------------------------------------------------------------------------------------- inputs


def test_parse_seeds():
    assert batch.parse_seeds("0-3") == [0, 1, 2, 3]
    assert batch.parse_seeds("5, 0-1,1") == [5, 0, 1]
    for bad in ("", "a", "3-1", "1-x"):
        with pytest.raises(ValueError, match="seeds="):
            batch.parse_seeds(bad)


def test_prompt_files_and_rows(tmp_path):
    (tmp_path / "p.txt").write_text("a red circle\n\n  a blue square  \n")
    rows, base = batch.read_prompts(tmp_path / "p.txt")
    assert rows == [{"prompt": "a red circle"}, {"prompt": "a blue square"}] and base == str(tmp_path)
    (tmp_path / "p.csv").write_text("prompt,seed,guidance,steps,negative\na red circle,3,2.5,4,\nx,,,,blurry\n")
    rows, _ = batch.read_prompts(tmp_path / "p.csv")
    assert rows[0] == {"prompt": "a red circle", "seed": "3", "guidance_scale": "2.5", "num_inference_steps": "4",
                       "negative_prompt": None}
    pq.write_table(pa.table({"prompt": ["a", "b"], "seed": [1, None]}), tmp_path / "p.parquet")
    items = batch.plan(tmp_path / "p.parquet", seeds="0-1")
    assert [(i.row, i.seed) for i in items] == [(0, 1), (1, 0), (1, 1)]  # a row's own seed replaces the seeds
    items = batch.plan(tmp_path / "p.csv", seeds=[7], num_inference_steps=9)
    assert items[0].inputs == {"num_inference_steps": 4, "guidance_scale": 2.5, "prompt": "a red circle"}
    assert items[1].inputs == {"num_inference_steps": 9, "prompt": "x", "negative_prompt": "blurry"}
    assert (items[0].seed, items[1].seed) == (3, 7)
    assert len({i.key for i in batch.plan(["a", "a"], seeds="0-2")}) == 6  # repeated rows stay separate items
    (tmp_path / "bad.csv").write_text("prompt,colour\na,red\n")
    with pytest.raises(ValueError, match="unknown column 'colour'"):
        batch.read_prompts(tmp_path / "bad.csv")
    (tmp_path / "noprompt.csv").write_text("seed\n1\n")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        batch.read_prompts(tmp_path / "noprompt.csv")
    with pytest.raises(ValueError, match="suffix '.json'"):
        (tmp_path / "p.json").write_text("[]")
        batch.read_prompts(tmp_path / "p.json")
    with pytest.raises(TypeError, match="not a batch-wide trace"):
        batch.plan(["a"], generator=1)
    with pytest.raises(TypeError, match="plain data"):
        batch.plan(["a"], image=Image.new("RGB", (8, 8)))


def test_bad_arguments(toy, tmp_path):
    with pytest.raises(ValueError, match="engine='dask'"):
        batch.run(toy, ["a"], tmp_path, engine="dask")
    with pytest.raises(ValueError, match="address= and workers= are for engine='ray'"):
        batch.run(toy, ["a"], tmp_path, address="auto")
    with pytest.raises(TypeError, match="pass model as 'toy'"):
        batch.run(toy, ["a"], tmp_path, engine="ray")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file"):
        batch.run(toy, ["a"], tmp_path / "file")


def test_ray_missing_names_the_extra(toy, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"sd-explainer\[scale\]"):
        batch.run("toy", ["a"], tmp_path, engine="ray")


# ---------------------------------------------------------------------------------------- bad rows, index


@pytest.fixture(scope="module")
def mixed(toy, tmp_path_factory):
    """A CSV batch with good rows, an image-to-image row and four bad rows."""
    folder = tmp_path_factory.mktemp("mixed")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "in.png")
    (folder / "prompts.csv").write_text(
        "prompt,scheduler,image,strength,seed\n"
        "a red circle on the left,,,,\n"
        ",,,,\n"                                        # 1: empty prompt
        "a blue square at the top,warp,,,\n"            # 2: unknown scheduler
        "a green circle,,missing.png,,\n"               # 3: missing image file
        "a yellow square,,,,x\n"                        # 4: a seed that is not a number
        "a blue circle on the right,ddim,in.png,0.5,\n"  # 5: image-to-image, image relative to the CSV
    )
    out = folder / "out"
    report = batch.run(toy, folder / "prompts.csv", out, seeds="0-1", num_inference_steps=STEPS, progress=False)
    return folder, out, report


def test_bad_rows_are_recorded_and_the_rest_completes(mixed):
    folder, out, report = mixed
    assert (report.planned, report.ok, report.errors, report.skipped) == (12, 4, 8, 0)
    rows = batch.read_index(out).to_pylist()
    by_row = {}
    for r in rows:
        by_row.setdefault(r["row"], []).append(r)
    assert [r["status"] for r in by_row[0] + by_row[5]] == ["ok"] * 4
    expected = {1: "ValueError: the prompt is empty", 2: "ValueError: scheduler='warp'",
                3: "FileNotFoundError: no image file at", 4: "ValueError: seed='x' must be a whole number"}
    for row, start in expected.items():
        assert len(by_row[row]) == 2
        for r in by_row[row]:
            assert r["status"] == "error" and r["error"].startswith(start), r["error"]
            assert r["trace_path"] is None and r["image_path"] is None
    assert "missing.png" in by_row[3][0]["error"]
    edit = explainer.load_trace(out / by_row[5][0]["trace_path"])
    assert edit.mode == "img2img" and edit.strength == 0.5 and edit.metadata["scheduler"]["class"] == "DDIMScheduler"


def test_index_schema_and_files(mixed):
    _, out, _ = mixed
    table = pq.read_table(out / batch.INDEX_FILE)
    assert table.schema == batch.index_schema()
    rows = table.to_pylist()
    assert len({r["key"] for r in rows}) == len(rows) == 12
    ok = [r for r in rows if r["status"] == "ok"]
    assert files(out, "traces") == sorted(Path(r["trace_path"]).name for r in ok)
    assert files(out, "images") == sorted(Path(r["image_path"]).name for r in ok)
    assert len(files(out, "records")) == 12
    for r in ok:
        tr = explainer.load_trace(out / r["trace_path"])
        assert tr.metadata["seed"] == r["seed"] and tr.prompt == r["prompt"]
        assert np.array_equal(np.asarray(Image.open(out / r["image_path"])), np.asarray(tr.final_image))
        assert r["trace_bytes"] == (out / r["trace_path"]).stat().st_size
        assert r["num_inference_steps"] == STEPS and r["guidance_scale"] == 7.5 and r["model"]
        assert r["steps"] == tr.num_steps and r["n_tokens"] == len(tr.tokens) and r["n_truncated"] == 0
        assert 0 <= r["x0_settled_step"] < tr.num_steps and 0 < r["final_mean"] < 1 and r["guidance_gap"] > 0
        assert 0 < r["t_trace_s"] <= r["t_total_s"] and r["t_write_s"] > 0 and r["finished_at"] is not None
    assert rows[0]["options"] is None  # trace() keywords without a column of their own go in options


def test_status(mixed, capsys):
    _, out, _ = mixed
    s = batch.status(out)
    assert (s["planned"], s["done"], s["ok"], s["errors"], s["pending"]) == (12, 12, 4, 8, 0)
    assert len(s["last_errors"]) == 5


def test_retry_failed_runs_only_failed_items(toy, mixed):
    folder, out, _ = mixed
    seen = []
    again = batch.run(toy, folder / "prompts.csv", out, seeds="0-1", num_inference_steps=STEPS, progress=False,
                      on_item=seen.append)
    assert (again.skipped, again.ok, again.errors, seen) == (12, 0, 0, [])  # finished is finished
    report = batch.run(toy, folder / "prompts.csv", out, seeds="0-1", num_inference_steps=STEPS, progress=False,
                       retry_failed=True, allow_empty_prompt=True, on_item=seen.append)
    assert (report.skipped, report.ok, report.errors) == (4, 2, 6)  # the empty prompt now traces unconditionally
    assert sorted({r["row"] for r in seen}) == [1, 2, 3, 4]
    rows = batch.read_index(out).to_pylist()
    assert len(rows) == len({r["key"] for r in rows}) == 12


# ---------------------------------------------------------------------------------------- resume


class Crash(RuntimeError):
    pass


def test_resume_after_a_crash(toy, tmp_path):
    prompts = PROMPTS * 2
    seen = []

    def crash_after_three(rec):
        seen.append(rec["key"])
        if len(seen) == 3:
            raise Crash("killed")

    with pytest.raises(Crash):
        batch.run(toy, prompts, tmp_path, seeds="0-1", num_inference_steps=STEPS, progress=False,
                  on_item=crash_after_three)
    items = batch.plan(prompts, seeds="0-1", model=batch.model_name(toy), num_inference_steps=STEPS)
    assert [i.key for i in items[:3]] == seen
    # a kill while the 4th item was being written leaves a partial trace file and no record
    (tmp_path / "traces" / f"{items[3].key}.safetensors").write_bytes(b"partial")
    (tmp_path / "index.parquet").unlink()  # and no index update: records/ is what counts
    more = []
    report = batch.run(toy, prompts, tmp_path, seeds="0-1", num_inference_steps=STEPS, progress=False,
                       on_item=lambda r: more.append(r["key"]))
    assert report.skipped == 3 and report.ok == len(items) - 3 and report.errors == 0
    assert more == [i.key for i in items[3:]]  # each item traced exactly once over the two runs
    rows = batch.read_index(tmp_path).to_pylist()
    assert [r["key"] for r in rows] == [i.key for i in items] and all(r["status"] == "ok" for r in rows)
    keys = sorted(i.key for i in items)
    assert files(tmp_path, "traces") == [k + ".safetensors" for k in keys]  # no duplicate, lost or partial file
    assert files(tmp_path, "images") == [k + ".png" for k in keys]
    assert explainer.load_trace(tmp_path / "traces" / f"{items[3].key}.safetensors").complete


# ---------------------------------------------------------------------------------------- fsspec outputs


def test_fsspec_output_folder(toy):
    import fsspec

    url = "memory://h17-batch"
    report = batch.run(toy, PROMPTS[:2], url, num_inference_steps=STEPS, record="per_step", progress=False)
    assert report.ok == 2
    fs = fsspec.filesystem("memory")
    rows = batch.read_index(url).to_pylist()
    assert json.loads(rows[0]["options"]) == {"record": "per_step"}
    assert all(fs.isfile(f"/h17-batch/{r['trace_path']}") and fs.isfile(f"/h17-batch/{r['image_path']}") for r in rows)
    assert batch.status(url)["ok"] == 2
    wm = explainer.corpus.word_map(url, "circle")
    assert wm.n == 1 and wm.mean.shape == (64, 64)
    fs.rm("/h17-batch", recursive=True)


def test_per_row_second_prompts_on_sdxl_and_an_error_on_a_one_encoder_model(toy, tmp_path):
    from _sdxl import build_sdxl_pipeline

    rows = [{"prompt": "a red circle", "prompt_2": "a blue square", "negative_prompt": "yellow", "negative_prompt_2": "green"},
            {"prompt": "a red circle"}]
    xl = batch.run(build_sdxl_pipeline(), rows, tmp_path / "xl", num_inference_steps=STEPS, guidance_scale=5.0,
                   height=64, width=64, progress=False)
    assert (xl.ok, xl.errors) == (2, 0)
    first, second = batch.read_index(tmp_path / "xl").to_pylist()
    assert (first["prompt_2"], first["negative_prompt_2"], second["prompt_2"]) == ("a blue square", "green", None)
    tr = explainer.load_trace(tmp_path / "xl" / first["trace_path"])
    texts = {seg["name"]: seg["text"] for seg in tr.metadata["token_segments"]["cond"]}
    assert texts["prompt_2"] == "a blue square"
    negative = {seg["name"]: seg["text"] for seg in tr.metadata["token_segments"]["uncond"]}
    assert negative["negative_prompt_2"] == "green"
    # the same row on a model with one text encoder is recorded as that row's error, the other row completes
    one = batch.run(toy, rows, tmp_path / "toy", num_inference_steps=STEPS, progress=False)
    assert (one.ok, one.errors) == (1, 1)
    bad = batch.read_index(tmp_path / "toy").to_pylist()[0]
    assert bad["status"] == "error" and "prompt_2" in bad["error"], bad["error"]


# ---------------------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is in the [test] extra; CI installs it")
    # on a busy 2-core machine the raylet can take longer than Ray's default 60 s wait to come up
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_raylet_start_wait_time_s", "180")
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_traces_are_bit_identical_to_local(ray_local, tmp_path, monkeypatch):
    import torch
    from ray.experimental import tqdm_ray

    prompts = [PROMPTS[0], {"prompt": PROMPTS[1], "scheduler": "euler"}, ""]
    kw = dict(seeds="0", num_inference_steps=STEPS)
    # CPU float results depend on the kernels and the thread count: the local run uses what a fresh Ray actor
    # uses (conftest turns oneDNN off for this process; actors run 1 thread each)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", True)
    local = batch.run("toy", prompts, tmp_path / "local", threads=1, progress=False, **kw)
    monkeypatch.undo()
    updates = []

    class Recording(tqdm_ray.tqdm):  # the driver's bar is Ray's distributed tqdm (the actors keep their own)
        def update(self, n: int = 1) -> None:
            updates.append(n)
            super().update(n)

    monkeypatch.setenv("RAY_TQDM_PATCH_PRINT", "0")
    monkeypatch.setattr(tqdm_ray, "tqdm", Recording)
    remote = batch.run("toy", prompts, tmp_path / "ray", engine="ray", workers=2, **kw)
    assert sum(updates) == 3
    assert (local.ok, local.errors) == (remote.ok, remote.errors) == (2, 1)
    a, b = batch.read_index(tmp_path / "local").to_pylist(), batch.read_index(tmp_path / "ray").to_pylist()
    assert [r["key"] for r in a] == [r["key"] for r in b]
    assert len({r["worker"] for r in b}) == 2  # both actors worked
    for ra, rb in zip(a, b):
        assert (ra["status"], ra["error"]) == (rb["status"], rb["error"])
        if ra["status"] != "ok":
            continue
        ta, tb = load_file(tmp_path / "local" / ra["trace_path"]), load_file(tmp_path / "ray" / rb["trace_path"])
        assert ta.keys() == tb.keys()
        for name in ta:
            assert ta[name].dtype == tb[name].dtype and np.array_equal(ta[name], tb[name]), name
        assert (tmp_path / "local" / ra["image_path"]).read_bytes() == (tmp_path / "ray" / rb["image_path"]).read_bytes()
    assert remote.startup_seconds > 0 and ray_local.is_initialized()  # an existing instance is left running


def test_a_worker_keeps_its_own_ray_progress_bar(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TQDM_PATCH_PRINT", "0")  # outside an actor the bar is drawn here; leave print() alone
    for sub in batch.DIRS.values():
        (tmp_path / sub).mkdir()
    worker = batch.Worker(toy, str(tmp_path), ray_progress=True)
    for item in batch.plan(PROMPTS[:2], num_inference_steps=STEPS):
        worker.process(item)
    state = worker.bar._get_state()
    worker.bar.close()
    assert state["x"] == 2 and state["desc"] == f"worker {worker.name}" and state["unit"] == "trace"


# ---------------------------------------------------------------------------------------- CLI


def test_cli_batch_and_status(tmp_path, capsys):
    (tmp_path / "p.txt").write_text(f"{PROMPTS[0]}\n{PROMPTS[1]}\n")
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "p.txt"), "--out", str(out), "--seeds", "0-1", "--steps", str(STEPS), "--quiet"]
    assert main(argv) == 0
    assert "4 items, 0 already done, 4 traced, 0 errors" in capsys.readouterr().out
    assert main(argv) == 0
    assert "4 already done, 0 traced" in capsys.readouterr().out
    assert main(["batch-status", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["planned"], s["ok"], s["errors"], s["pending"]) == (4, 4, 0, 0)
    (tmp_path / "bad.csv").write_text("prompt,scheduler\na red circle,nope\n")
    assert main(["batch", str(tmp_path / "bad.csv"), "--out", str(out), "--steps", str(STEPS), "--quiet"]) == 1
    assert "scheduler='nope'" in capsys.readouterr().err
    assert main(["batch-status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "5 done of 1 planned (4 ok, 1 errors, 0 pending)" in text and "error: row 0 seed 0" in text


@pytest.mark.parametrize("args, message", [
    (["--seeds", "3-1"], "--seeds: seeds='3-1'"),
    (["--address", "auto"], "--address needs --engine ray"),
    (["--workers", "2"], "--workers needs --engine ray"),
    (["--model", "/no/such/model"], "no model folder at /no/such/model"),
])
def test_cli_batch_errors(tmp_path, capsys, args, message):
    (tmp_path / "p.txt").write_text("a red circle\n")
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1], err


def test_cli_status_errors(tmp_path, capsys):
    for argv, message in ((["batch", str(tmp_path / "no.csv"), "--out", str(tmp_path)], "does not exist"),
                          (["batch-status", str(tmp_path)], "is not a batch folder")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]

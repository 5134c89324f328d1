"""Importers on files written by the real tools (fixtures/importers, see make_fixtures.py), the compute catalog,
malformed inputs, and the long format on ../shared/data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecaster import catalog
from forecaster.data import validate
from forecaster.errors import DataError
from forecaster.importers import import_results

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "importers"
TRUTH = json.loads((FIX / "truth.json").read_text())
SHARED = ROOT.parent / "shared" / "data"


def _shared(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"{p} is absent (the shared real-results folder is not checked out beside the repo)")
    return p


# --------------------------------------------------------------------------- lm-eval


@pytest.fixture(scope="module")
def lmeval_df():
    return import_results("lm-eval", [FIX / "lmeval"])


def test_lmeval_models_settings_and_validate(lmeval_df):
    df = lmeval_df
    assert set(df["model"]) == {"EleutherAI/pythia-70m", "EleutherAI/pythia-410m@step43000", "EleutherAI/pythia-1.4b"}
    assert set(df["family"]) == {"pythia"}
    assert set(df["setting"]) == {"0-shot", "2-shot"}
    # compute from the catalog, including the step checkpoint
    c410 = df.loc[df["model"] == "EleutherAI/pythia-410m@step43000", "compute"].iloc[0]
    assert c410 == pytest.approx(6 * 405334016 * 43000 * 2097152)
    v = validate(df)
    assert set(v["kind"]) == {"item", "aggregate"}
    items = v[v["kind"] == "item"]
    assert (items["task"] == "sim_cloze").all() and len(items) == 40
    assert set(items["n_tokens"]) == {1.0, 2.0, 3.0}  # whitespace-word fallback
    assert items["correct"].isin([0.0, 1.0]).all()
    gen = v[v["kind"] == "aggregate"]
    assert (gen["task"] == "sim_arith").all() and (gen["n_items"] == 10).all()


def test_lmeval_recovers_simulated_law(lmeval_df):
    it = lmeval_df[lmeval_df["item"].notna()].copy()
    it["y"] = np.log(-it["logprob"] / it["n_tokens"])
    it["x"] = np.log10(it["compute"]) - 21
    zero = it[it["setting"] == "0-shot"].groupby("model").agg(x=("x", "first"), y=("y", "mean"))
    slope, intercept = np.polyfit(zero["x"], zero["y"], 1)
    assert slope == pytest.approx(TRUTH["B"], abs=1e-6)  # same items in every model: item effects cancel
    assert intercept == pytest.approx(TRUTH["A"], abs=3 * TRUTH["item_sd"] / math.sqrt(10))
    big = it[it["model"] == "EleutherAI/pythia-1.4b"].pivot(index="item", columns="setting", values="y")
    assert (big["2-shot"] - big["0-shot"]).to_numpy() == pytest.approx(2 * TRUTH["shot_effect"], abs=1e-9)
    # the log's own compute per model agrees with what the simulated LM used
    for args, log10c in TRUTH["lmeval_models"].items():
        kv = dict(p.split("=") for p in args.split(","))
        name = kv["pretrained"] + (f"@{kv['revision']}" if "revision" in kv else "")
        got = lmeval_df.loc[lmeval_df["model"] == name, "compute"].iloc[0]
        assert math.log10(got) == pytest.approx(log10c)


def test_lmeval_single_results_file_and_token_count_option():
    run = next((FIX / "lmeval" / "0shot" / "EleutherAI__pythia-70m").glob("results_*.json"))
    df = import_results("lm-eval", [run], token_count=1)
    assert set(df["task"]) == {"sim_cloze", "sim_arith"}
    assert (df["n_tokens"] == 1).all()


def test_lmeval_malformed(tmp_path):
    bad = tmp_path / "results_2024-01-01T00-00-00.000000.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        import_results("lm-eval", [bad])
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match="not an lm-eval results file"):
        import_results("lm-eval", [bad])
    # a samples file whose results file is missing
    src = next((FIX / "lmeval" / "0shot" / "EleutherAI__pythia-70m").glob("samples_sim_cloze_*.jsonl"))
    lone = tmp_path / "lone" / src.name
    lone.parent.mkdir()
    shutil.copy(src, lone)
    with pytest.raises(DataError, match="no results_"):
        import_results("lm-eval", [lone])
    # a damaged samples line
    run = tmp_path / "run"
    shutil.copytree(src.parent, run)
    s = next(run.glob("samples_sim_cloze_*.jsonl"))
    s.write_text(s.read_text().splitlines()[0] + "\n{broken\n")
    with pytest.raises(DataError, match="line 2"):
        import_results("lm-eval", [run])


def test_unknown_model_needs_compute_table(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIX / "lmeval" / "0shot" / "EleutherAI__pythia-70m", run)
    r = next(run.glob("results_*.json"))
    data = json.loads(r.read_text())
    data["config"]["model_args"] = {"pretrained": "acme/secret-model-7b"}
    r.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"acme/secret-model-7b.*--compute-table"):
        import_results("lm-eval", [run])
    table = tmp_path / "compute.csv"
    table.write_text("model,params,tokens,family\nacme/secret-model-7b,7e9,1e12,acme\n")
    df = import_results("lm-eval", [run], compute_table=table)
    assert df["compute"].unique() == pytest.approx([4.2e22])
    assert set(df["family"]) == {"acme"}


# --------------------------------------------------------------------------- inspect


def test_inspect_eval_logs():
    pytest.importorskip("inspect_ai")
    df = import_results("inspect", [FIX / "inspect" / "eval"], compute_table=FIX / "inspect" / "compute_table.csv")
    assert set(df["model"]) == {"mockllm/sim-small", "mockllm/sim-large"}
    assert set(df["task"]) == {"sim_addition"}
    assert (df["n_items"] == 12).all()  # 6 samples x 2 epochs
    assert (df["epochs"] == 2).all()
    comp = df.set_index("model")["compute"]
    assert comp["mockllm/sim-large"] == pytest.approx(3e22)
    acc = df.set_index("model")["n_correct"] / df.set_index("model")["n_items"]
    assert acc["mockllm/sim-large"] > acc["mockllm/sim-small"]
    v = validate(df)
    assert (v["kind"] == "aggregate").all()


def test_inspect_json_log_and_errors(tmp_path):
    pytest.importorskip("inspect_ai")
    df = import_results("inspect", [FIX / "inspect" / "json"], compute_table=FIX / "inspect" / "compute_table.csv")
    assert df["model"].tolist() == ["mockllm/sim-small"] and df["n_items"].tolist() == [4]
    with pytest.raises(DataError, match="no training compute known for model 'mockllm/sim-small'"):
        import_results("inspect", [FIX / "inspect" / "json"])
    bad = tmp_path / "broken.eval"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="cannot be read as an Inspect log"):
        import_results("inspect", [bad])


# --------------------------------------------------------------------------- BIG-bench


def test_bigbench_fixture():
    df = import_results("bigbench", [FIX / "bigbench"], n_items=20)
    assert set(df["model"]) == {"gpt3-small", "gpt3-xl"}
    assert set(df["setting"]) == {"0-shot", "1-shot"}
    assert "toy_arithmetic" not in set(df["task"])  # the aggregate entry is skipped
    v = validate(df)
    assert (v["n_correct"] <= 20).all()
    # the law: log CE slope in log10 compute
    z = df[df["setting"] == "0-shot"].groupby("model").agg(x=("compute", "first"), ce=("ce", "mean"))
    slope = np.diff(np.log(z["ce"])) / np.diff(np.log10(z["x"]))
    assert slope[0] == pytest.approx(TRUTH["B"], abs=0.05)


def test_bigbench_needs_n_items_and_rejects_garbage(tmp_path):
    with pytest.raises(DataError, match="n_items"):
        import_results("bigbench", [FIX / "bigbench"])
    bad = tmp_path / "scores_x.json"
    bad.write_text(json.dumps({"model": "x", "scores": 3}))
    with pytest.raises(DataError, match="not a BIG-bench scores file"):
        import_results("bigbench", [bad], n_items=10)


# --------------------------------------------------------------------------- long


def test_long_pythia_evals():
    df = import_results("long", [_shared("pythia_evals.csv.gz")])
    assert not df["model"].str.endswith("@step0").any()  # untrained checkpoints dropped
    lam = df[(df["task"] == "lambada_openai") & (df["model"] == "pythia-12b@step143000") & (df["setting"] == "0-shot")]
    assert len(lam) == 1
    r = lam.iloc[0]
    assert r["accuracy"] == pytest.approx(0.705, abs=0.005)
    assert r["ce"] == pytest.approx(math.log(3.95), abs=0.01)
    assert r["n_items"] == 5153 and r["n_tokens"] == 1
    # bloom-1b7 has no compute in the file: the catalog fills it
    b = df[df["model"] == "bloom-1b7"]
    assert len(b) and b["compute"].iloc[0] == pytest.approx(6 * 1.7e9 * 341e9)
    v = validate(df, allow_single_compute=True)
    assert len(v) == len(df)


def test_long_arithmetic_settings_and_subtasks():
    p = _shared("pythia_arithmetic.csv.gz")
    df = import_results("long", [p], n_tokens={"arith_addition": 2})
    assert set(df["setting"]) == {"0-shot", "2-shot", "4-shot", "8-shot", "16-shot"}
    assert set(df["task"]) == {"arith_addition", "arith_multiplication"}  # x1=<n> subtasks folded into ALL
    assert (df.loc[df["task"] == "arith_addition", "n_tokens"] == 2).all()
    assert (df["n_items"] == 5000).all()
    validate(df)


def test_long_lu2023_unknown_compute_is_named():
    p = _shared("lu2023_on_emergence.csv.gz")
    with pytest.raises(DataError, match="gpt2.*--compute-table"):
        import_results("long", [p])
    with pytest.warns(UserWarning, match="dropped models"):
        df = import_results("long", [p], drop_unknown=True)
    assert {"0-shot/closed", "5-shot+instruct/open"} <= set(df["setting"])
    validate(df)


def test_long_small_file_ppl_and_ce(tmp_path):
    f = tmp_path / "long.csv"
    f.write_text(
        "family,model,params,train_tokens,compute_flops,step,task,subtask,shots,metric,value,n_examples,setting\n"
        "pythia,pythia-70m,,,,,lambada,,0,ppl,20.0,,x\n"
        "pythia,pythia-70m,,,,,lambada,,0,acc,0.25,100,x\n"
        "pythia,pythia-1b,,,,,lambada,,0,ce_nats_per_token,1.5,100,x\n"
        "pythia,pythia-1b,,,,,lambada,,0,acc,0.5,100,x\n"
        "pythia,pythia-1b,,,0,0,lambada,,0,acc,0.0,100,x\n"
    )
    df = import_results("long", [f]).set_index("model")
    assert df.loc["pythia-70m", "ce"] == pytest.approx(math.log(20.0))
    assert df.loc["pythia-70m", "n_items"] == 100  # taken from the cell's acc row
    assert df.loc["pythia-1b", "ce"] == pytest.approx(1.5)
    assert df.loc["pythia-70m", "compute"] == pytest.approx(catalog.lookup("pythia-70m").compute)
    assert "pythia-1b@step0" not in df.index
    validate(df.reset_index())


def test_long_malformed(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing column"):
        import_results("long", [f])
    f.write_text("family,model,task,shots,metric,value,n_examples,compute_flops\nf,m,t,0,acc,1.7,10,1e20\n")
    with pytest.raises(DataError, match="not a fraction"):
        import_results("long", [f])
    with pytest.raises(DataError, match="file not found"):
        import_results("long", [tmp_path / "nope.csv"])
    # negative compute is an error (0 marks an untrained checkpoint, dropped); empty values are skipped
    f.write_text("family,model,task,shots,metric,value,n_examples,compute_flops\n"
                 "f,m,t,0,acc,0.5,10,-1e20\nf,m2,t,0,acc,,10,1e21\nf,m3,t,0,acc,0.6,10,2e21\n")
    with pytest.raises(DataError, match=r"model 'm' has compute -1e\+20 < 0 FLOPs"):
        import_results("long", [f])
    f.write_text("family,model,task,shots,metric,value,n_examples,compute_flops\n"
                 "f,m,t,0,acc,0.5,10,1e20\nf,m2,t,0,acc,,10,1e21\nf,m3,t,0,acc,0.6,10,2e21\n")
    assert sorted(import_results("long", [f])["model"]) == ["m", "m3"]


# --------------------------------------------------------------------------- entry point + catalog


def test_unknown_format():
    with pytest.raises(DataError, match="unknown import format"):
        import_results("helm", [FIX])


@pytest.mark.parametrize(
    "name,revision,params,tokens",
    [
        ("EleutherAI/pythia-1b", None, 1011781632, 299892736000),
        ("pythia-1b@step43000", None, 1011781632, 43000 * 2097152),
        ("EleutherAI/pythia-160m-deduped", "step1000", 162322944, 1000 * 2097152),
        ("pythia-1.3b-deduped-v0@step13000", None, 1414647808, 13000 * 2097152),
        ("facebook/opt-1.3b", None, 1.3e9, 180e9),
        ("bigscience/bloom-560m", None, 5.6e8, 341e9),
        ("huggyllama/llama-7b", None, 6.7e9, 1.0e12),
        ("models--llama/13B", None, 13.0e9, 1.0e12),
        ("meta-llama/Llama-2-7b-chat-hf", None, 6.74e9, 2.0e12),
        ("meta-llama/Meta-Llama-3-8B", None, 8.03e9, 15e12),
        ("tiiuae/falcon-40b", None, 40e9, 1.0e12),
        ("google/flan-t5-large", None, 783150080, 1.1e12),
        ("t5-small", None, 60506624, 2**40),
        ("allenai/OLMo-7B", None, 6.89e9, 2.46e12),
        ("Qwen/Qwen2.5-7B", None, 7.61e9, 18e12),
        ("EleutherAI/gpt-j-6b", None, 6053381344, 402e9),
    ],
)
def test_catalog_lookup(name, revision, params, tokens):
    hit = catalog.lookup(name, revision=revision)
    assert hit is not None and hit.source
    assert hit.params == pytest.approx(params)
    assert hit.tokens == pytest.approx(tokens)
    assert hit.compute == pytest.approx(6 * params * tokens)


def test_catalog_gpt3_compute_gpt2_unknown_and_never_guess():
    g3 = catalog.lookup("davinci")
    assert g3.compute == pytest.approx(3640 * 8.64e19)
    g2 = catalog.lookup("openai-community/gpt2")
    assert g2.params == pytest.approx(124439808) and g2.compute is None
    assert catalog.lookup("text-davinci-003") is None
    assert catalog.lookup("acme/unknown-13b") is None
    assert catalog.lookup("facebook/opt-1.3b", revision="step5") is None  # no tokens-per-step for OPT


def test_catalog_file_is_complete():
    rows = catalog.catalog_rows()
    fams = {r["family"] for r in rows}
    assert {"pythia", "pythia-deduped", "gpt2", "gpt3", "opt", "bloom", "llama", "llama-2", "llama-3", "falcon",
            "t5", "flan-t5", "olmo", "qwen", "gpt-j"} <= fams
    for r in rows:
        assert r["source"].strip(), r["model"]
        assert r["params"] and r["params"] > 0, r["model"]
    pythia = [r for r in rows if r["family"].startswith("pythia")]
    assert len(pythia) == 16


def test_compute_table_errors(tmp_path):
    t = tmp_path / "c.csv"
    t.write_text("name,flops\na,1\n")
    with pytest.raises(DataError, match="compute table needs columns"):
        catalog.read_compute_table(t)
    t.write_text("model,compute\na,-1\n")
    with pytest.raises(DataError, match="line 2"):
        catalog.read_compute_table(t)
    t.write_text("model,compute,Compute \na,1e20,2e20\n")  # which one is meant is not ours to guess
    with pytest.raises(DataError, match="column 'compute' 2 times"):
        catalog.read_compute_table(t)
    with pytest.raises(DataError, match="is a directory"):
        catalog.read_compute_table(tmp_path)
    t.write_text("model,revision,params,tokens\nEleutherAI/pythia-70m,step1000,7e7,2e9\n")
    table = catalog.read_compute_table(t)
    assert catalog.resolve("pythia-70m@step1000", table=table).compute == pytest.approx(6 * 7e7 * 2e9)


def test_compute_table_duplicate_model_is_an_error(tmp_path):
    """A model listed twice is refused with both lines named (which row wins is not ours to guess); the same
    model at two checkpoints is two models."""
    t = tmp_path / "c.csv"
    t.write_text("model,compute\na,1e20\nb,2e20\na,3e20\n")
    with pytest.raises(DataError, match=r"line 4: model 'a' is listed twice \(also on line 2\)"):
        catalog.read_compute_table(t)
    t.write_text("model,step,compute\na,1000,1e20\na,2000,2e20\n")
    table = catalog.read_compute_table(t)
    assert table["a@step1000"].compute == 1e20 and table["a@step2000"].compute == 2e20

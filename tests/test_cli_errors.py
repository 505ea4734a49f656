"""Every command of the CLI, given bad arguments, ends the same way: exactly one line on
stderr, ``cliprt COMMAND: error: ...`` (``cliprt: error: ...`` for an unknown option the
top-level parser reports), exit status 2, never a traceback.

The commands are taken from the parser, so a new command (or a new choice of a command's
positional, like ``eval zeroshot|retrieval``) without bad-argument cases here fails
`test_every_command_has_cases`, and a new numeric option without a checked type fails
`test_every_numeric_option_checks_its_range`."""
from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cliprt import cli


def _commands():
    """{(command, choice or None): subparser} for every command, and for every choice of a
    command's positional argument that has choices."""
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out = {}
    for name, p in sub.choices.items():
        choices = [c for a in p._actions if not a.option_strings and a.choices for c in a.choices]
        for c in choices or [None]:
            out[(name, c)] = p
    return out


COMMANDS = _commands()


def _key(argv):
    p = COMMANDS.get((argv[0], None))
    if p is not None:
        return argv[0], None
    choice = next((a for a in argv[1:] if (argv[0], a) in COMMANDS), None)
    return argv[0], choice


def run(capsys, argv):
    """(exit status, stderr) of ``cliprt ARGV`` in this process."""
    try:
        code = cli.main([os.fspath(a) for a in argv])
    except SystemExit as e:             # a usage error, from argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, err


def assert_one_line_error(code, err, command=None):
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    prefix = f"cliprt {command}: error: " if command else "cliprt"
    assert lines[0].startswith(prefix), err
    return lines[0]


# ------------------------------------------------------------------ parse-time checks

def _numeric_options():
    for (name, _), p in sorted(COMMANDS.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        for a in p._actions:
            if a.option_strings and a.type is not None:
                yield name, a
    # (duplicates from commands listed once per choice are harmless)


NUMERIC = sorted({(name, a.option_strings[-1]): a for name, a in _numeric_options()}.items())


def test_every_numeric_option_checks_its_range():
    unchecked = [f"{name} {opt}" for (name, opt), a in NUMERIC if a.type in (int, float)]
    assert not unchecked, f"numeric options without a range-checking type: {unchecked}"
    assert len(NUMERIC) >= 15


@pytest.mark.parametrize("command, option", [k for k, _ in NUMERIC], ids=[" ".join(k) for k, _ in NUMERIC])
def test_bad_numbers_are_usage_errors(command, option, capsys):
    a = dict(NUMERIC)[(command, option)]
    bads = ["abc", ""]
    if hasattr(a.type, "minimum"):
        bads += [str(a.type.minimum - 1), str(a.type.minimum - 2)]
    if hasattr(a.type, "bounds"):
        low, high = a.type.bounds
        bads += [repr(low - 0.5), repr(high + 0.5)]
    assert len(bads) == 4, f"{command} {option}: an argument type the test does not know"
    for bad in bads:
        code, err = run(capsys, [command, f"{option}={bad}"])
        line = assert_one_line_error(code, err, command)
        assert f"argument {'/'.join(a.option_strings)}:" in line, line


@pytest.mark.parametrize("command", sorted({c for c, _ in COMMANDS}))
def test_unknown_options_are_one_line(command, capsys):
    code, err = run(capsys, [command, "--no-such-option"])
    line = assert_one_line_error(code, err)
    # argparse names a missing required argument before an unknown one
    assert "--no-such-option" in line or "the following arguments are required" in line, line


def test_no_command_is_one_line(capsys):
    code, err = run(capsys, [])
    assert "required" in assert_one_line_error(code, err)


# ------------------------------------------------------------------ errors past the parser

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny model, photos, a collection made with them, broken copies of it, and other
    wrong things to point commands at."""
    pytest.importorskip("torch", reason="needs the 'export' extra to build the test model")
    pytest.importorskip("open_clip", reason="needs the 'export' extra to build the test model")
    import _tiny_clip
    from cliprt.collection import Collection
    from cliprt.encode import Encoder

    model = _tiny_clip.exported(tmp_path_factory)[1]
    root = tmp_path_factory.mktemp("cli-errors")
    photos = root / "photos"
    (photos / "dog").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(photos / "dog" / f"{i}.jpg")
    enc = Encoder.load(model)
    col = root / "col"
    with Collection.create(col, model=os.path.abspath(model), dim=enc.dim) as c:
        c.ingest(photos, enc)
    broken = {}
    for name, rel, content in (("manifest", "vectors/MANIFEST", b"cliprt-index\x00garbage"),
                               ("sqlite", "metadata.sqlite", b"this is not a database" * 100),
                               ("json", "collection.json", b'{"format": ')):
        shutil.copytree(col, root / f"broken-{name}")
        for extra in ("-wal", "-shm"):
            if rel == "metadata.sqlite" and os.path.exists(root / f"broken-{name}" / (rel + extra)):
                os.remove(root / f"broken-{name}" / (rel + extra))
        (root / f"broken-{name}" / rel).write_bytes(content)
        broken[name] = root / f"broken-{name}"
    other_dim = root / "other-dim"
    Collection.create(other_dim, model=os.path.abspath(model), dim=enc.dim + 1).close()
    other_model = root / "other-model"
    Collection.create(other_model, model="another-model", dim=enc.dim).close()
    (root / "labels.txt").write_text("dog\ncat\n")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00\x81 not text")
    (root / "garbage.tar").write_bytes(b"not a tar archive" * 50)
    (root / "notes.md").write_text("not an image")
    (root / "empty").mkdir()
    home = root / "home"                            # a default model whose manifest is broken
    (home / "models" / "default").mkdir(parents=True)
    (home / "models" / "default" / "manifest.json").write_text("{not json")
    return {"model": model, "photos": photos, "img": photos / "dog" / "0.jpg", "col": col, "root": root,
            "missing": root / "missing", "broken_manifest": broken["manifest"], "broken_sqlite": broken["sqlite"],
            "broken_json": broken["json"], "other_dim": other_dim, "other_model": other_model,
            "labels": root / "labels.txt", "binary": root / "binary.txt", "garbage_tar": root / "garbage.tar",
            "notes": root / "notes.md", "empty": root / "empty", "home": home}


# (argv with {placeholders} from `world`, a piece of the expected message, environment)
CASES = [
    # info and demo take nothing that can be wrong past the parser
    (["info", "--json", "extra"], "unrecognized arguments", None),
    (["demo", "--n", "10", "--dim", "4", "--queries", "2", "unexpected"], "unrecognized arguments", None),
    # export: checked before any model is loaded
    (["export", "bogus:x", "--out", "{root}/e1"], "unknown source kind", None),
    (["export", "hf:{missing}", "--out", "{root}/e2"], "config.json", None),
    (["export", "open_clip:ViT-B-32", "--out", "{photos}"], "already exists", None),
    (["export", "open_clip:ViT-B-32", "--out", "{root}/e3", "--precision", "fp32,fp99"], "--precision", None),
    (["export", "open_clip:ViT-B-32", "--out", "{root}/e4", "--checkpoint", "{missing}"], "does not exist", None),
    (["export", "open_clip:ViT-B-32", "--out", "{root}/e5", "--verify-images", "{missing}"], "not a folder", None),
    # models
    (["models", "list"], "manifest.json", {"CLIPRT_HOME": "{home}"}),
    (["models", "build-default", "--holdout-every", "3"], "its own --out", None),
    (["models", "bogus"], "invalid choice", None),
    # embed
    (["embed", "{missing}", "--model", "{model}", "--index", "{root}/c1"], "does not exist", None),
    (["embed", "{notes}", "--model", "{model}", "--index", "{root}/c2"], "is not a folder", None),
    (["embed", "{binary}", "--model", "{model}", "--index", "{root}/c3"], "cannot read file list", None),
    (["embed", "{garbage_tar}", "--model", "{model}", "--index", "{root}/c4"], "cannot read tar shard", None),
    (["embed", "{empty}", "--model", "{model}", "--index", "{root}/c5"], "no images found", None),
    (["embed", "{photos}", "--model", "{missing}", "--index", "{root}/c6"], "no model package", None),
    (["embed", "{photos}", "--model", "{photos}", "--index", "{root}/c7"], "not a model package", None),
    (["embed", "{photos}", "--model", "{model}", "--index", "{img}"], "is a file", None),
    (["embed", "{photos}", "--model", "{model}", "--index", "{broken_manifest}"], "corrupt", None),
    (["embed", "{photos}", "--model", "{model}", "--index", "{broken_sqlite}"], "unreadable", None),
    (["embed", "{photos}", "--model", "{model}", "--index", "{broken_json}"], "unreadable", None),
    (["embed", "{photos}", "--model", "{model}", "--index", "{other_dim}"], "-d embeddings", None),
    (["embed", "{photos}", "--model", "{model}", "--index", "{other_model}"], "was embedded with model", None),
    (["embed", "{photos}", "--model", "{model}", "--index", "{col}", "--storage", "i8"], "stores f32, not i8", None),
    (["embed", "{photos}", "--model", "{model}", "--index", "{root}/c8", "--max-item-bytes", "lots"],
     "--max-item-bytes", None),
    # search
    (["serve", "--collection", "{missing}"], "is not a directory", None),
    (["serve", "--collection", "{photos}"], "not a cliprt collection", None),
    (["serve", "--collection", "{col}", "--index", "{col}"], "not both", None),
    (["serve", "--port", "-1"], "must be at least 0", None),
    (["serve", "--max-batch", "0"], "must be at least 1", None),
    (["serve", "--max-wait-ms", "abc"], "expected a number", None),
    (["serve", "--timeout", "0"], "must be in", None),
    (["serve", "--max-body", "lots"], "max-body", None),
    (["serve", "--api-key-env", "CLIPRT_TEST_SURELY_UNSET_VAR"], "not set", None),
    (["search", "{col}", "dog", "--where", 'x={{"a": 1}}'], "JSON object is not a value", None),
    (["search", "{col}", "dog", "--where", 'x=[{{"a": 1}}]'], "inside a list", None),
    (["search", "{col}", "dog", "--where", "x=[[1, 2]]"], "a list inside a list", None),
    (["search", "{col}", "dog", "--where", "x=99999999999999999999"], "64-bit", None),
    (["search", "{col}", "dog", "--where", "novalue"], "FIELD=VALUE", None),
    (["search", "{col}", "dog", "--where", "=1"], "no field", None),
    (["search", "{col}", "dog", "--where", "x-y=1"], "bad metadata field name", None),
    (["search", "{col}", "dog", "--where", "bad'field=1"], "bad metadata field name", None),
    (["search", "{col}", "dog", "--text", "cat"], "not both", None),
    (["search", "{col}"], "give a text query", None),
    (["search", "{col}", "--image", "{img}", "--text", "x", "--weights", "a,b"], "--weights", None),
    (["search", "{col}", "--image", "{img}", "--text", "x", "--weights", "0,0"], "not both zero", None),
    (["search", "{col}", "--image", "{missing}"], "query image", None),
    (["search", "{col}", "--image", "{photos}"], "is a directory", None),
    (["search", "{col}", "--image", "{notes}"], "notes.md", None),
    (["search", "{col}", "dog", "--model", "{missing}"], "no model package", None),
    (["search", "{photos}", "dog"], "no collection", None),
    (["search", "{missing}", "dog"], "no collection", None),
    (["search", "{broken_manifest}", "dog"], "corrupt", None),
    (["search", "{broken_sqlite}", "dog"], "unreadable", None),
    (["search", "{broken_json}", "dog"], "unreadable", None),
    (["search", "{other_model}", "dog"], "no model package", None),
    # classify
    (["classify", "{missing}", "--model", "{model}", "--labels", "{labels}"], "no image could be classified", None),
    (["classify", "{missing}", "{notes}", "--model", "{model}", "--labels", "{labels}"], "and 1 more image failed",
     None),
    (["classify", "{img}", "--model", "{model}", "--labels", "{missing}"], "built-in", None),
    (["classify", "{img}", "--model", "{model}", "--labels", "{binary}"], "not UTF-8", None),
    (["classify", "{img}", "--model", "{model}", "--labels", "{labels}", "--templates", "{missing}"],
     "does not exist", None),
    (["classify", "{img}", "--model", "{missing}", "--labels", "{labels}"], "no model package", None),
    (["classify", "{img}", "--model", "default", "--labels", "{labels}"], "manifest.json", {"CLIPRT_HOME": "{home}"}),
    # eval
    (["eval", "zeroshot", "--model", "{model}", "--data", "{missing}"], "no evaluation data", None),
    (["eval", "zeroshot", "--model", "{model}", "--data", "{img}"], "not UTF-8", None),
    (["eval", "zeroshot", "--model", "{model}", "--data", "{photos}/dog"], "no class folders", None),
    (["eval", "zeroshot", "--model", "{model}", "--data", "{photos}", "--storage", "f99"], "unknown storage", None),
    (["eval", "zeroshot", "--model", "{model}", "--data", "{photos}", "--classnames", "{binary}"], "not UTF-8",
     None),
    (["eval", "zeroshot", "--model", "{missing}", "--data", "{photos}"], "no model package", None),
    (["eval", "retrieval", "--model", "{model}", "--data", "{missing}"], "No such file", None),
    (["eval", "retrieval", "--model", "{model}", "--data", "{binary}"], "not UTF-8", None),
    (["eval", "retrieval", "--model", "{model}", "--data", "{labels}"], "captions", None),
    # bench
    (["bench", "--model", "{model}", "--images", "{missing}", "--repeats", "1"], "does not exist", None),
    (["bench", "--model", "{model}", "--texts", "{missing}", "--repeats", "1"], "does not exist", None),
    (["bench", "--model", "{model}", "--texts", "{binary}", "--repeats", "1"], "not UTF-8", None),
    (["bench", "--model", "{missing}"], "no model package", None),
    # quickstart: a default model that cannot be loaded
    (["quickstart", "--queries", "dog"], "manifest.json",
     {"CLIPRT_HOME": "{home}", "CLIPRT_SAMPLE_IMAGES": "{photos}/dog"}),
]


def _case_id(case):
    return " ".join(case[0])[:70]


def test_every_command_has_cases():
    covered = {_key(argv) for argv, _, _ in CASES}
    missing = sorted(f"{c} {s or ''}".strip() for c, s in COMMANDS if (c, s) not in covered)
    assert not missing, f"commands without bad-argument cases in this file: {missing}"


@pytest.mark.parametrize("argv, expect, env", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_arguments_are_one_line_errors(argv, expect, env, world, capsys, monkeypatch):
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v.format(**world))
    argv = [a.format(**world) for a in argv]
    code, err = run(capsys, argv)
    command = argv[0]
    line = assert_one_line_error(code, err, None if "unrecognized arguments" in expect else command)
    assert expect in line, line


def test_refused_export_exits_1_with_one_line(tmp_path, capsys, monkeypatch):
    """The parity check's refusal keeps its own status, 1; the details go to stdout."""
    for mod in ("torch", "onnx", "onnxruntime"):
        pytest.importorskip(mod, reason="needs the 'export' extra")
    import cliprt.export.pipeline as pipeline
    from cliprt.export.verify import ParityError

    def refuse(*args, **kwargs):
        raise ParityError("export of 'x' refused, verification failed:\n  image.fp32 min cosine 0.5\n"
                          "tower  precision  min cosine")

    monkeypatch.setattr(pipeline, "export_package", refuse)
    monkeypatch.setattr("cliprt.export.source.load_source", lambda *a, **k: object())
    code = cli.main(["export", "hf:anything", "--out", os.fspath(tmp_path / "refused")])
    out, err = capsys.readouterr()
    assert code == 1 and err.splitlines() == ["cliprt export: error: export of 'x' refused, verification failed "
                                              "(details on stdout)"]
    assert "min cosine 0.5" in out


def test_failure_families_are_one_line(capsys, monkeypatch):
    """What a library may raise past the commands' own checks: each is one line, exit 2;
    a bug (any other exception) keeps its traceback."""
    import sqlite3
    import tarfile
    import zlib

    import cliprt
    from cliprt.cli import index_cmds

    raised = [sqlite3.ProgrammingError("Error binding parameter 1: type 'dict' is not supported"),
              sqlite3.OperationalError("database is locked"), OverflowError("int too large"),
              EOFError("Compressed file ended"), zlib.error("invalid distance"), tarfile.ReadError("bad header"),
              cliprt.FormatError("corrupt index file 'x'"), PermissionError(13, "Permission denied", "/x/y"),
              KeyError("field"), ValueError("two\nlines"), ValueError()]
    for e in raised:
        def boom(args, e=e):
            raise e
        monkeypatch.setattr(index_cmds, "cmd_info", boom)
        code, err = run(capsys, ["info"])
        line = assert_one_line_error(code, err, "info")
        assert line != "cliprt info: error: "
    assert line == "cliprt info: error: ValueError"
    monkeypatch.setattr(index_cmds, "cmd_info", lambda args: [][1])
    with pytest.raises(IndexError):
        run(capsys, ["info"])


# ------------------------------------------------------------------ the real entry point

def test_entry_point_errors(world):
    from _cliprt_process import run_cliprt

    for argv, expect in ((["search", world["col"], "dog", "--where", 'x={"a":1}'], "JSON object is not a value"),
                         (["embed", world["missing"], "--model", world["model"], "--index", world["root"] / "s1"],
                          "does not exist"),
                         (["search", world["col"], "-k", "abc"], "argument -k"),
                         (["info", "--bogus"], "unrecognized arguments")):
        proc = run_cliprt(*argv, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith("cliprt") and expect in line, line

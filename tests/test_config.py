"""One config model: defaults <- YAML <- --set overrides <- flags; errors name the key."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from relation_cli.config import RelationConfig, load_config, parse_override, save_config
from relation_cli.errors import RelationError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_reference():
    cfg = RelationConfig()
    assert (cfg.infer.steps, cfg.infer.guidance, cfg.infer.seed, cfg.adapter.scale) == (24, 3.5, 1000, 1.0)
    assert cfg.infer.max_sequence_length == 512 and cfg.lora.rank == 128 and cfg.adapter.num_tokens == 128


def test_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("infer:\n  steps: 8\n  seed: 5\nadapter:\n  scale: 0.5\n")
    cfg = load_config(f, ["infer.steps=4", "infer.prompt=make it blue"], {"infer.seed": 7, "infer.guidance": None})
    assert (cfg.infer.steps, cfg.infer.seed, cfg.adapter.scale, cfg.infer.prompt) == (4, 7, 0.5, "make it blue")
    assert cfg.infer.guidance == 1.0  # the embedded demo model's own default (relation_cli/demo/relation.yaml)
    other = load_config(f, ["model.base=black-forest-labs/FLUX.1-dev"])
    assert (other.infer.guidance, other.infer.steps) == (3.5, 8)  # field default; the file's steps



@pytest.mark.parametrize(
    "override, message",
    [
        ("infer.stepz=3", "infer.stepz: unknown key"),
        ("nosuch.key=1", "nosuch: unknown key"),
        ("infer.steps=abc", "infer.steps"),
        ("infer.steps=-1", "infer.steps: Input should be greater than or equal to 1"),
        ("adapter.scale=-0.5", "adapter.scale"),
        ("infer.steps", "expected section.key=value"),
        ("steps=3", "not a section.key name"),
        ("infer.steps=true", "infer.steps: Value error, expected a number, not true/false"),
        ("train.learning_rate=false", "train.learning_rate: Value error, expected a number, not true/false"),
        ("infer.guidance=.inf", "infer.guidance: Input should be a finite number"),
        ("train.learning_rate=.nan", "train.learning_rate: Input should be a finite number"),
        ("infer.seed=99999999999999999999", "infer.seed: Input should be less than or equal to 9223372036854775807"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(RelationError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(None, [override])


def test_yaml_problems(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("infer: [unclosed\n")
    with pytest.raises(RelationError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(RelationError, match="mapping of sections"):
        load_config(top)
    with pytest.raises(RelationError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    twice = tmp_path / "twice.yaml"
    twice.write_text("infer:\n  steps: 3\n  steps: 4\n")  # yaml.safe_load would keep 4, silently
    with pytest.raises(RelationError, match="line 3: not valid YAML \\(the key 'steps' is given twice\\)"):
        load_config(twice)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("infer:\n  colour: red\n")
    with pytest.raises(RelationError, match="infer.colour: unknown key"):
        load_config(unknown)


def test_all_errors_reported_together():
    with pytest.raises(RelationError) as err:
        load_config(None, ["infer.steps=0", "infer.seed=-3", "lora.bogus=1"])
    text = str(err.value)
    assert "infer.steps" in text and "infer.seed" in text and "lora.bogus" in text


def test_override_values_are_yaml():
    assert parse_override("lora.targets=[attn.to_q, attn.to_k]") == (["lora", "targets"], ["attn.to_q", "attn.to_k"])
    assert parse_override("infer.prompt=") == (["infer", "prompt"], "")
    assert parse_override("infer.guidance=3.5") == (["infer", "guidance"], 3.5)


@pytest.mark.parametrize("text, value", [
    ("infer.prompt=yes", "yes"), ("infer.prompt=no", "no"), ("infer.prompt=123", "123"), ("infer.prompt=#x", "#x"),
    ("infer.prompt='a: b'", "a: b"), ("infer.prompt=  two words ", "two words"), ("model.base=null", "null"), ("model.image_encoder=null", None),
    ("infer.max_area=", None), ("infer.width=", None), ("model.image_encoder=", None), ("infer.prompt=", ""),
    ("train.data=[a.jsonl, b.jsonl]", ["a.jsonl", "b.jsonl"]), ("train.data=a.jsonl", "a.jsonl"),
    ("train.mixed_precision=no", False), ("infer.steps=4", 4), ("lora.bogus=yes", True),
])  # fmt: skip
def test_a_text_setting_takes_the_text_as_typed_and_an_empty_value_is_none_where_allowed(text, value):
    """YAML would read ``yes`` as true, ``123`` as a number and ``#x`` as nothing: a text setting (``str`` or
    ``str | None``) keeps what was typed (quotes still quote); other settings stay YAML (a choice's bare ``no``
    is the choice "no": Section's validator); an empty value is None where the setting may be empty."""
    assert parse_override(text)[1] == value
    if not text.startswith("lora.bogus"):
        load_config(None, [text])


@pytest.mark.parametrize("text", ["infer.steps=0x10", "infer.steps=0o7", "infer.seed=1:30", "infer.guidance=1:30.5"])
def test_a_number_not_written_in_decimal_is_refused_not_read_as_yaml_1_1(text):
    """YAML 1.1 (PyYAML) reads 0x10 as 16, 0o7 as 7 and 1:30 as 90 (base 60): a --set value keeps such text as
    typed, and validation says it is not a number, instead of running with a number nobody wrote. (Digits grouped
    with ``_``, ``1_000``, stay numbers: Python's own ``int`` and pydantic read them so.)"""
    key = text.split("=")[0]
    assert parse_override(text)[1] == text.split("=")[1]
    with pytest.raises(RelationError, match=key):
        load_config(None, [text])


@pytest.mark.parametrize("text, value", [("infer.steps=011", 11), ("infer.seed=0777", 777), ("infer.guidance=03.5", 3.5)])
def test_leading_zeros_are_decimal_not_octal(text, value, tmp_path):
    """YAML 1.1 reads 011 as 9 and 0777 as 511 (octal): relation reads numbers only in decimal, on --set and in a
    config file alike, so 011 is the 11 that was written."""
    section, key = text.split("=")[0].split(".")
    assert getattr(getattr(load_config(None, [text]), section), key) == value
    (tmp_path / "c.yaml").write_text(f"{section}:\n  {key}: {text.split('=')[1]}\n")
    assert getattr(getattr(load_config(tmp_path / "c.yaml"), section), key) == value


@pytest.mark.parametrize("value", ["0x10", "0o7", "1:30"])
def test_a_config_file_number_not_written_in_decimal_is_refused(value, tmp_path):
    """The same rule in a config file: `steps: 0x10` was 16 and `seed: 1:30` 90, silently (YAML 1.1)."""
    (tmp_path / "c.yaml").write_text(f"infer:\n  steps: {value}\n")
    with pytest.raises(RelationError, match="infer.steps"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("text, value", [("infer.steps=12", 12), ("infer.guidance=3.5", 3.5), ("infer.guidance=1e1", 10.0),
                                         ("infer.guidance=.5", 0.5), ("infer.guidance=3.", 3.0), ("infer.seed=+7", 7),
                                         ("infer.steps=1_0", 10)])  # fmt: skip
def test_decimal_numbers_are_numbers(text, value):
    section, key = text.split("=")[0].split(".")
    assert getattr(getattr(load_config(None, [text]), section), key) == value


@pytest.mark.parametrize("text", ["model.base=[a]", "train.validation_data=[a.jsonl]", "infer.prompt={x: 1}"])
def test_a_list_or_mapping_for_a_text_setting_is_refused_not_stringified(text):
    """``model.base=[a]`` is a YAML list: refused with the hint to quote it, as a YAML file's list would be, not
    taken as the text '[a]'; text that only starts with a bracket stays text."""
    with pytest.raises(RelationError, match=f"{text.split('=')[0]}: expected text, got .* \\(YAML read it so: quote it\\)"):
        load_config(None, [text])
    assert load_config(None, ["infer.prompt=[watercolour] style"]).infer.prompt == "[watercolour] style"
    assert load_config(None, ["infer.prompt='[a]'"]).infer.prompt == "[a]"


def test_a_config_from_a_pipe_is_read_and_an_endless_one_refused(tmp_path):
    """``--config <(printf ...)`` names a pipe, not a regular file; /dev/zero would never end."""
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("infer:\n  steps: 5\n"))
    writer.start()
    try:
        assert load_config(fifo).infer.steps == 5
    finally:
        writer.join(timeout=10)
    if Path("/dev/zero").exists():
        with pytest.raises(RelationError, match="config file '/dev/zero': over 1,048,576 bytes; not a config file"):
            load_config(Path("/dev/zero"))


def test_a_yaml_file_whose_text_setting_yaml_read_as_a_boolean_says_to_quote_it(tmp_path):
    (tmp_path / "c.yaml").write_text("infer:\n  prompt: yes\n")
    with pytest.raises(RelationError, match="infer.prompt: expected text, got True \\(YAML read it so: quote it\\)"):
        load_config(tmp_path / "c.yaml")


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["infer.steps=9", "model.base=some/model"])
    path = save_config(cfg, tmp_path / "out.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["infer"]["steps"] == 9


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    load_config(ROOT / "configs" / name)


def test_the_full_size_configs_read_what_the_readmes_prepare_command_writes():
    """README's Relation252K steps: ``relation prepare ... --output data/relation252k`` (the command
    configs/prepare-relation252k.yaml opens with), then the training and eval configs read that folder."""
    first = (ROOT / "configs" / "prepare-relation252k.yaml").read_text().splitlines()[0]
    written = first.split("--output ")[1].split()[0]
    assert f"relation prepare data/Relation252K --output {written} " in (ROOT / "README.md").read_text()
    readers = {p.name: load_config(p) for p in (ROOT / "configs").glob("*.yaml") if "flux" in p.name or "released" in p.name}
    data = {n: c.train.data for n, c in readers.items() if n.startswith("train-") and "released" not in n}
    assert data and all(d == f"{written}/train.jsonl" for d in data.values()), data
    assert readers["eval-released.yaml"].eval.inputs == [f"{written}/test_seen.jsonl", f"{written}/test_unseen.jsonl"]


def test_yaml_merge_keys_still_work_and_seeds_fit_torch(tmp_path):
    merged = tmp_path / "merged.yaml"
    merged.write_text("infer: &i\n  steps: 3\n  guidance: 2.0\neval:\n  seed: 5\n")
    assert load_config(merged).infer.steps == 3
    anchors = tmp_path / "anchors.yaml"
    anchors.write_text("x-common: &c\n  steps: 3\ninfer:\n  <<: *c\n  guidance: 2.0\n")
    with pytest.raises(RelationError, match="x-common: unknown key"):  # the merge itself is read, not refused
        load_config(anchors)
    unhashable = tmp_path / "unhashable.yaml"
    unhashable.write_text("? [a, b]\n: 1\n")
    with pytest.raises(RelationError, match="not valid YAML \\(found unhashable key\\)"):
        load_config(unhashable)
    with pytest.raises(RelationError, match="train.seed: Input should be less than or equal to"):
        load_config(None, [f"train.seed={2**60}"])  # seeded as seed * 1000 + rank: must stay under 2^63
    assert load_config(None, ["train.seed=9000000000000000"]).train.seed == 9 * 10**15


def test_a_file_that_is_not_a_config_is_said_so_in_a_short_line(tmp_path):
    """A weights index or other JSON given as --config listed every key as unknown (62 of them, 3.5 kB on one line):
    now it is named as not a relation config file; a config with many unknown keys lists 10 and a count."""
    (tmp_path / "keys.json").write_text(json.dumps({f"blocks.{i}.weight": [] for i in range(62)}))
    with pytest.raises(RelationError, match=r"62 top-level keys that are not sections of relation's configuration "
                                            r"\(e\.g\. blocks\.0\.weight, .*\): is it a relation config file\?$") as e:  # fmt: skip
        load_config(tmp_path / "keys.json")
    assert len(str(e.value)) < 300 + len(str(tmp_path))  # was over 3,000 characters
    (tmp_path / "many.yaml").write_text("infer:\n" + "".join(f"  key{i}: 1\n" for i in range(14)))
    with pytest.raises(RelationError, match=r"infer\.key9: unknown key; \.\.\. and 4 more$"):
        load_config(tmp_path / "many.yaml")
    (tmp_path / "typos.yaml").write_text("a: 1\nb: 2\nc: 3\ninfr: {steps: 4}\ninfer: {steps: 4}\n")  # a config, with typos
    with pytest.raises(RelationError, match=r"\): a: unknown key; b: unknown key; c: unknown key; infr: unknown key$"):
        load_config(tmp_path / "typos.yaml")


def test_a_key_given_twice_in_a_set_value_is_refused():
    """`--set lora.paths=[{path: a, path: b}]` became a LoRA path of that whole text."""
    with pytest.raises(RelationError, match=r"^override 'lora\.paths=\[\{path: a, path: b\}\]': the key 'path' is given twice$"):
        load_config(None, ["lora.paths=[{path: a, path: b}]"])


def test_a_section_given_a_value_and_a_setting_given_subkeys_are_named(tmp_path):
    """`infer: 5` said pydantic's "valid dictionary or instance of InferSection"; `--set infer.steps.x=8` said
    infer.steps is not a valid integer (got {'x': 8})."""
    (tmp_path / "c.yaml").write_text("infer: 5\n")
    with pytest.raises(RelationError, match=r"infer: expected a section of key: value settings, got 5$"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(RelationError, match=r"^override 'infer\.steps\.x=8': infer\.steps is a setting, not a section$"):
        load_config(None, ["infer.steps.x=8"])


def test_a_second_yaml_document_is_named(tmp_path):
    """A `---` and a second configuration in one file said "not valid YAML (but found another document)"."""
    (tmp_path / "two.yaml").write_text("infer:\n  steps: 4\n---\ninfer:\n  steps: 5\n")
    with pytest.raises(RelationError, match=r"'\S+two\.yaml' line 3: a second YAML document starts here \(after '---'\); "
                                            r"a config file holds one$"):  # fmt: skip
        load_config(tmp_path / "two.yaml")


def test_a_saved_config_reads_back_when_a_text_looks_like_a_number(tmp_path):
    """save_config wrote `prompt: 1e3` unquoted (YAML 1.1 reads it as text), which the decimal loader reads as 1000.0:
    the saved config of `--prompt 1e3` could not be read back. Texts that either reading takes for a number are quoted."""
    cfg = load_config(None, ["infer.prompt=1e3", "train.output_dir=010", "eval.output_dir=.5"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert (again.infer.prompt, again.train.output_dir, again.eval.output_dir) == ("1e3", "010", ".5")
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["train"]["output_dir"] == "010"  # and for YAML 1.1 readers

"""An image encoder that does not fit is refused in one line, before any output (not a shape error mid-denoising):
one of another width than the adapter's projection reads, and a folder that is not a SigLIP at all."""

from __future__ import annotations

import pytest
from conftest import EXAMPLES

from relation_cli.cli import main

PAIR = [str(EXAMPLES / "exemplar_before.png"), str(EXAMPLES / "exemplar_after.png")]


@pytest.fixture(scope="module")
def wide_encoder(tmp_path_factory):
    """A SigLIP 24 wide (the tiny model's adapter reads 16), from the offline builder."""
    from relation_cli.arch import ArchSpec
    from relation_cli.progress import quiet_libraries
    from relation_cli.tiny import init_model

    quiet_libraries()
    return init_model(tmp_path_factory.mktemp("wide") / "m", ArchSpec(siglip_hidden=24), seed=0) / "image_encoder"


def sets(tiny_model, encoder) -> list[str]:
    pairs = [f"model.base={tiny_model / 'base'}", f"model.image_encoder={encoder}", f"adapter.path={tiny_model / 'adapter'}"]
    return [x for s in pairs for x in ("--set", s)]


def test_an_encoder_of_another_width_is_refused_by_infer_and_train(tiny_model, wide_encoder, tmp_path, capsys):
    out = tmp_path / "o.png"
    args = ["infer", "--exemplar", *PAIR, "--query", str(EXAMPLES / "query.png"), "-o", str(out)]
    said = f"adapter '{tiny_model / 'adapter'}' does not fit this image encoder: image_embed_dim 16 (the image encoder gives 24)"
    for extra in (["--dry-run"], []):  # the dry-run from the two config.json files; the run as the weights load
        assert main(args + extra + sets(tiny_model, wide_encoder)) == 1
        err = capsys.readouterr().err
        assert said in err and "internal error" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    data = tmp_path / "data"
    assert main(["prepare", "--synthetic", "2", "--output", str(data)]) == 0
    run = tmp_path / "run"
    train = ["train", "--data", str(data / "train.jsonl"), "--output-dir", str(run), "--steps", "1",
             "--set", "train.validation_samples=0"]  # fmt: skip
    for extra in (["--dry-run"], []):  # the dry-run says it from the configs alone; the run before its first step
        capsys.readouterr()
        assert main(train + extra + sets(tiny_model, wide_encoder)) == 1
        assert said in capsys.readouterr().err
        assert not (run / "adapter").exists() and not (run / "checkpoints").exists()


def test_a_folder_that_is_not_a_siglip_is_refused(tiny_model, tmp_path, capsys):
    text_encoder = tiny_model / "base" / "text_encoder"  # a CLIP text model: a config.json, weights, not SigLIP
    out = tmp_path / "o.png"
    args = ["infer", "--exemplar", *PAIR, "--query", str(EXAMPLES / "query.png"), "-o", str(out)]
    for extra in (["--dry-run"], []):
        assert main(args + extra + sets(tiny_model, text_encoder)) == 1
        err = capsys.readouterr().err
        assert (f"model.image_encoder '{text_encoder}': a SigLIP is needed (model_type siglip_vision_model or siglip), "
                "this folder holds clip_text_model") in err  # fmt: skip
        assert "internal error" not in err
    assert not out.exists()

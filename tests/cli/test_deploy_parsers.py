"""The parsers of eval, predict, rank and export: one --batch-size default, export's --to."""

from resnetcls.cli.deploy_parsers import INFERENCE_BATCH
from resnetcls.cli.parsers import build_parser
from tests.conftest import run_cli


def test_eval_predict_and_rank_share_one_batch_size_default():
    parser = build_parser()
    for argv in (["eval", "m", "d"], ["predict", "m", "x.jpg"], ["rank", "m", "f", "--out", "r.csv"]):
        args = parser.parse_args(argv)
        assert (
            (args.batch_size, args.backend, args.precision)
            == (INFERENCE_BATCH, "auto", "auto")
            == (
                32,
                "auto",
                "auto",
            )
        )
    args = parser.parse_args(["eval", "m", "d", "--backend", "onnxruntime", "--precision", "fp32"])
    assert (args.backend, args.precision) == ("onnxruntime", "fp32")


def test_eval_takes_unknown_images_and_the_open_set_flags():
    parser = build_parser()
    args = parser.parse_args(["eval", "m", "d"])
    assert (args.unknown, args.open_set, args.unknown_accept) == (None, "auto", None)
    args = parser.parse_args(
        ["eval", "m", "d", "--unknown", "u", "--open-set", "on", "--unknown-accept", "0.9"]
    )
    assert (args.unknown, args.open_set, args.unknown_accept) == ("u", "on", 0.9)
    for flag, value in (("--unknown-accept", "0"), ("--unknown-accept", "1.5"), ("--open-set", "maybe")):
        bad = run_cli("eval", "m", "d", flag, value)
        assert bad.returncode == 2 and f"argument {flag}" in bad.stderr, bad.stderr


def test_export_takes_the_file_type_as_to_and_still_reads_format():
    parser = build_parser()
    assert parser.parse_args(["export", "m", "--to", "torchscript"]).to == "torchscript"
    args = parser.parse_args(["export", "m", "--format", "onnx"])
    assert (args.to, args.old_format) == (None, "onnx")
    text = run_cli("export", "--help").stdout
    assert "--to {onnx,torchscript}" in text and "--format" not in text
    bad = run_cli("export", "m", "--to", "pdf")
    assert bad.returncode == 2 and "argument --to: invalid choice: 'pdf'" in bad.stderr

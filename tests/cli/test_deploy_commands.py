"""export's file type, and serve's settings: the serve: section of the config with the command line's
flags on top."""

import shutil

from resnetcls.cli.deploy_commands import serve_settings
from resnetcls.cli.parsers import build_parser
from resnetcls.serve.schema import ServeSettings
from tests.conftest import run_cli


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", "m", *argv])


def test_serve_settings_come_from_the_serve_section_with_explicit_flags_on_top(tmp_path):
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text("serve:\n  max_batch: 8\n  max_body_mb: 2.5\n  port: 9000\n  backend: onnxruntime\n")
    settings, host, port, workers = serve_settings(serve_args("--config", str(deploy)))
    assert (settings.model, settings.max_batch, settings.max_body_bytes, settings.backend) == (
        "m",
        8,
        2_500_000,
        "onnxruntime",
    )
    assert (host, port, workers) == ("127.0.0.1", 9000, 1)
    assert settings.max_idle_per_client == 16  # not in the file: serve's default
    settings, _, port, _ = serve_settings(
        serve_args(
            "--config",
            str(deploy),
            "--set",
            "serve.max_batch=4",
            "--set",
            "serve.stall_s=5",
            "--port",
            "8123",
        )
    )
    assert (settings.max_batch, settings.stall_s, port) == (
        4,
        5.0,
        8123,
    )  # --set over the file, flags over both
    settings, *_ = serve_settings(
        serve_args("--config", str(deploy), "--max-batch", "16", "--set", "serve.max_batch=4")
    )
    assert settings.max_batch == 16
    assert serve_settings(serve_args())[0] == ServeSettings("m")  # no file, no flags: ServeSettings' defaults


def test_serve_settings_take_resnetcls_set_over_the_flags_with_a_note(monkeypatch, capsys):
    monkeypatch.setenv("RESNETCLS_SET", "serve.port=8200 serve.max_batch=2")
    settings, _, port, _ = serve_settings(serve_args("--port", "8123", "--max-batch", "16"))
    assert (port, settings.max_batch) == (8200, 2)
    assert capsys.readouterr().err == (
        "note: RESNETCLS_SET: serve.port=8200 serve.max_batch=2 "
        "(from the environment, over the command line)\n"
    )


def test_export_writes_the_file_type_given_by_to_or_by_format_with_a_note(tiny_run, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "best", model)
    result = run_cli("export", model, "--to", "torchscript")
    assert result.returncode == 0, result.stderr
    assert (model / "model.torchscript.pt").is_file() and "now --to" not in result.stderr
    result = run_cli("export", model, "--format", "torchscript", "--out", tmp_path / "m.pt")
    assert result.returncode == 0 and (tmp_path / "m.pt").is_file()
    assert "export --format is now --to; read as --to torchscript (write --to torchscript)" in result.stderr
    neither = run_cli("export", model)
    assert neither.returncode == 2 and "--to onnx or --to torchscript" in neither.stderr
    both = run_cli("export", model, "--to", "onnx", "--format", "torchscript")
    assert both.returncode == 2 and "give one file type, as --to" in both.stderr


def test_the_shipped_serve_config_holds_serves_defaults():
    settings, host, port, workers = serve_settings(serve_args("--config", "serve"))
    assert settings == ServeSettings("m") and (host, port, workers) == ("127.0.0.1", 8000, 1)


def test_serve_takes_open_set_settings_from_flags_or_the_serve_section(tmp_path):
    settings, *_ = serve_settings(serve_args())
    assert (settings.open_set, settings.unknown_accept) == ("auto", None)  # 0 in the config: the model's own
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text('serve:\n  open_set: "off"\n  unknown_accept: 0.9\n')  # YAML reads a bare off as false
    settings, *_ = serve_settings(serve_args("--config", str(deploy)))
    assert (settings.open_set, settings.unknown_accept) == ("off", 0.9)
    settings, *_ = serve_settings(
        serve_args("--config", str(deploy), "--open-set", "on", "--unknown-accept", "0.8")
    )
    assert (settings.open_set, settings.unknown_accept) == ("on", 0.8)
    refused = run_cli("serve", "m", "--set", "serve.open_set=maybe")
    assert refused.returncode == 2 and "serve.open_set='maybe'" in refused.stderr
    refused = run_cli("serve", "m", "--unknown-accept", "2")
    assert refused.returncode == 2 and "--unknown-accept: must be between 0 and 1, got 2" in refused.stderr

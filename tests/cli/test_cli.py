"""The binary's contract: help, version, exit codes and one-line errors, config errors that name
file, key and line, --print-config, and `env --json` checked against the torch it was built with."""
import json

import torch
import yaml


def test_help_lists_only_working_commands(llmtune):
    r = llmtune("--help")
    assert r.code == 0
    for present in ("env", "eval", "infer", "tokenize", "finetune", "merge", "quantize", "prune", "distill", "serve",
                    "sweep", "validate"):
        assert f"\n  {present} " in r.out, present


def test_version(llmtune):
    r = llmtune("--version")
    assert r.code == 0 and r.out.startswith("llmtune 0.")


def test_unknown_command_is_one_line_exit_2(llmtune):
    r = llmtune("nosuch")
    assert r.code == 2
    assert len(r.err_lines) == 1
    assert "unknown command 'nosuch'" in r.err_lines[0]
    assert r.out == ""


def test_no_command_and_unknown_flag_exit_2(llmtune):
    for args in ((), ("env", "--bogus"), ("env", "--seed", "abc")):
        r = llmtune(*args)
        assert r.code == 2, args
        assert len(r.err_lines) == 1, (args, r.err)
        assert r.err_lines[0].startswith("llmtune: error:")


def test_env_json_matches_the_linked_torch(llmtune):
    r = llmtune("env", "--json")
    assert r.code == 0, r.err
    env = json.loads(r.out)
    assert env["libtorch_version"] == torch.__version__.split("+")[0]
    assert env["libtorch_cuda_version"] == torch.version.cuda
    assert env["cuda_available"] == torch.cuda.is_available()
    assert len(env["cuda_devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    for d in env["cuda_devices"]:
        assert d["name"] == torch.cuda.get_device_name(d["index"])
        assert d["total_memory_bytes"] == torch.cuda.get_device_properties(d["index"]).total_memory
    assert env["mps_available"] == torch.backends.mps.is_available()
    assert env["cpu_threads"] == torch.get_num_threads()
    assert isinstance(env["cuda_kernels_compiled"], bool)
    want_device = "cuda:0" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert env["default_device"] == want_device
    assert env["default_dtype"] == ("bf16" if want_device.startswith("cuda") else "fp32")
    assert env["default_device_reason"] and env["default_dtype_reason"]


def test_env_honours_device_and_dtype_requests(llmtune, tmp_path):
    r = llmtune("env", "--json", "--device", "cpu", "--dtype", "bf16")
    env = json.loads(r.out)
    assert (env["default_device"], env["default_dtype"]) == ("cpu", "bf16")
    assert env["default_device_reason"] == "requested"
    cfg = tmp_path / "run.yaml"
    cfg.write_text("device: cpu\ndtype: fp16\n")
    env = json.loads(llmtune("env", cfg, "--json").out)
    assert env["default_dtype"] == "fp16"
    env = json.loads(llmtune("env", cfg, "dtype=fp32", "--json").out)
    assert env["default_dtype"] == "fp32"


def test_unavailable_device_is_a_runtime_error(llmtune):
    if torch.cuda.is_available():
        return
    r = llmtune("env", "--device", "cuda")
    assert r.code == 1
    assert len(r.err_lines) == 1 and "CUDA is not available" in r.err_lines[0]


def test_yaml_syntax_error_names_file_and_line(llmtune, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("seed: 1\ndevice: [cpu\n")
    r = llmtune("env", cfg)
    assert r.code == 2
    assert len(r.err_lines) == 1
    assert f"{cfg}:" in r.err_lines[0] and "YAML syntax error" in r.err_lines[0]


def test_unknown_key_names_file_line_and_suggestion(llmtune, tmp_path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("seed: 1\ndevce: cpu\n")
    r = llmtune("env", cfg)
    assert r.code == 2
    assert r.err_lines == [f"llmtune: error: {cfg}:2: unknown key 'devce' (did you mean 'device'?)"]


def test_wrong_type_names_file_line_and_key(llmtune, tmp_path):
    cfg = tmp_path / "type.yaml"
    cfg.write_text("device: cpu\nseed: many\n")
    r = llmtune("env", cfg)
    assert r.code == 2
    assert r.err_lines == [f"llmtune: error: {cfg}:2: key 'seed' expects an integer, got 'many'"]


def test_all_config_errors_at_once(llmtune, tmp_path):
    cfg = tmp_path / "many.yaml"
    cfg.write_text("seed: -3\nlog_level: loud\n")
    r = llmtune("env", cfg, "dtype=int4", "nokey=1")
    assert r.code == 2
    assert len(r.err_lines) == 4, r.err
    assert f"{cfg}:1" in r.err_lines[0] and f"{cfg}:2" in r.err_lines[1]
    assert "dtype=int4" in r.err_lines[2] and "nokey" in r.err_lines[3]


def test_missing_config_file(llmtune, tmp_path):
    r = llmtune("env", tmp_path / "absent.yaml")
    assert r.code == 2 and "absent.yaml" in r.err_lines[0]


def test_stray_positional_is_a_usage_error(llmtune):
    r = llmtune("env", "notakeyvalue")
    assert r.code == 2 and "notakeyvalue" in r.err_lines[0]


def test_print_config_is_yaml_with_layered_values(llmtune, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("seed: 5\ndtype: bf16\n")
    r = llmtune("env", cfg, "dtype=fp16", "--device", "cpu", "--print-config")
    assert r.code == 0, r.err
    resolved = yaml.safe_load(r.out)
    assert resolved == {"device": "cpu", "dtype": "fp16", "seed": 5, "log_level": "info"}
    assert f"# {cfg}:1" in r.out and "# flag --device" in r.out

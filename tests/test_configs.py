"""Every YAML under configs/ parses and instantiates through LightningCLI without loading weights: full
configs alone, fragments (any file in a sub-folder) layered on each full config. The paper configs carry
Table 9's hyperparameters and name only models whose config.json ships under tests/fixtures. The
DeepPlanning configs run their start-up checks against a synthetic database in the benchmark's layout
(tests/deepplanning_fixture.py), given as model.environment.init_args.root."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace
from lightning import Callback, LightningDataModule

from tiplight.cli import TiplightCLI
from tiplight.module import DistillModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FIXTURES = Path(__file__).with_name("fixtures")
BASES = sorted(p.name for p in CONFIGS.glob("*.yaml"))
FRAGMENTS = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/**/*.yaml"))
PAPER = {  # Table 9: config -> learning rate (full fine-tuning; the single-GPU LoRA config scales it)
    "qwen3_8b_to_4b.yaml": 1e-6,
    "llama_70b_to_8b.yaml": 3e-7,
    "qwen25_14b_to_1p5b.yaml": 1e-6,
    "single_gpu_qwen3_1p7b_to_0p6b.yaml": 1e-5,
}


class ParseOnlyCLI(TiplightCLI):
    """Instantiates every class a config names (module, data module, callbacks, logger, strategy) and
    stops before the Trainer, which would need the configured accelerator."""

    def instantiate_trainer(self, **kwargs):
        return self.config_init["trainer"]


@cache
def parser():
    """TiplightCLI's parser, built once (building it is most of a parse's cost)."""
    return ParseOnlyCLI(args=config_args(BASES[0]), run=False).parser


@dataclass
class Parsed:
    config: Namespace  # as parsed, classes not yet built
    init: Namespace  # every class instantiated


@cache
def synthetic_deepplanning() -> str:
    """A synthetic DeepPlanning travel benchmark folder (written once per test session)."""
    import tempfile

    from deepplanning_fixture import write_benchmark

    return str(write_benchmark(Path(tempfile.mkdtemp(prefix="deepplanning-")) / "travelplanning"))


def config_args(*files: str) -> list[str]:
    """``--config`` for each file; a DeepPlanning config also gets the synthetic database as its root."""
    args = [a for f in files for a in ("--config", str(CONFIGS / f))]
    if any(f.startswith("deepplanning") for f in files):
        args += ["--model.environment.init_args.root", synthetic_deepplanning()]
    return args


@cache
def parse(*files: str) -> Parsed:
    config = parser().parse_args(config_args(*files))
    return Parsed(config, parser().instantiate_classes(config))


def name_of(value: object) -> str:
    return f"{value.__module__}.{value.__qualname__}" if isinstance(value, type) else str(value)


def contains(expected: object, got: object) -> bool:
    """Whether the parsed value ``got`` holds everything the fragment's ``expected`` sets (defaults added
    by parsing are ignored; short class names match their dotted paths; sets of classes match by name)."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(k in got and contains(v, got[k]) for k, v in expected.items())
    if isinstance(expected, list) and isinstance(got, (set, frozenset)):
        return sorted(map(str, expected)) == sorted(map(name_of, got))
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(map(contains, expected, got))
    if isinstance(got, Enum):
        got = got.name
    if isinstance(expected, str) and isinstance(got, str) and "." not in expected:
        return got.rsplit(".", 1)[-1] == expected
    return expected == got


def test_configs_are_found():
    assert {"qwen3_8b_to_4b.yaml", "llama_70b_to_8b.yaml", "qwen25_14b_to_1p5b.yaml",
            "single_gpu_qwen3_1p7b_to_0p6b.yaml"} <= set(BASES)
    assert {"selection/soft_or_50.yaml", "strategy/fsdp.yaml", "strategy/fsdp2.yaml",
            "strategy/ddp_lora.yaml", "quantization/teacher_4bit.yaml"} <= set(FRAGMENTS)


@pytest.mark.parametrize("base", BASES)
def test_full_config_instantiates_without_weights(base):
    init = parse(base).init
    assert isinstance(init.model, DistillModule) and init.model.student is None  # nothing loaded yet
    assert isinstance(init.data, LightningDataModule)
    assert all(isinstance(c, Callback) for c in init.trainer.callbacks or [])


@pytest.mark.parametrize("fragment", FRAGMENTS)
@pytest.mark.parametrize("base", BASES)
def test_fragment_layers_on_base(base, fragment):
    parsed = parse(base, fragment)
    fragment_tree = yaml.safe_load((CONFIGS / fragment).read_text())
    assert contains(fragment_tree, parsed.config.as_dict()), fragment
    assert isinstance(parsed.init.model, DistillModule)


@pytest.mark.parametrize("base", sorted(PAPER))
def test_paper_hyperparameters(base):
    config = parse(base).config
    model, data, trainer = config.model, config.data.init_args, config.trainer
    assert model.optimizer.class_path == "torch.optim.AdamW"
    assert model.optimizer.init_args.lr == pytest.approx(PAPER[base])
    assert model.optimizer.init_args.weight_decay == 0.1
    optimization = model.optimization
    assert (optimization.lr_schedule, optimization.warmup_steps, optimization.grad_clip) == ("cosine", 0, 1.0)
    assert (model.sampling.temperature, model.sampling.top_p, model.sampling.max_new_tokens) == (1.0, 1.0, 8192)
    assert (model.memory.chunk_size, model.stats_scope, model.objective.class_path, model.objective.init_args.denominator) == (
        512, "batch", "tiplight.objectives.ReverseKL", "kept")
    assert (data.prompts_per_step, data.rollouts_per_prompt, data.max_prompt_tokens) == (8, 16, 2048)
    assert data.train_files == ["math_train"]
    if "qwen3" in base:
        assert data.chat_template_kwargs == {"enable_thinking": False}
    ranks = trainer.devices * trainer.num_nodes
    per_rank = data.prompts_per_step * data.rollouts_per_prompt // ranks
    assert data.prompts_per_step % ranks == 0 and per_rank % model.memory.micro_batch_size == 0
    evals = [c for c in trainer.callbacks if c.class_path.endswith("MathEvalCallback")]
    assert len(evals) == 1 and evals[0].init_args.num_samples == 16 and evals[0].init_args.temperature == 1.0
    assert set(evals[0].init_args.benchmarks) == {"math500", "aime24", "aime25"}


def hub_ids(base: str) -> list[str]:
    model = parse(base).config.model
    return [m for m in (model.student, model.teacher) if m and "/" in m and not m.startswith(("tiplight:", "/", "."))]


@pytest.mark.parametrize("base", BASES)
def test_named_models_have_fixture_configs(base):
    for hub_id in hub_ids(base):
        assert (FIXTURES / hub_id.replace("/", "--") / "config.json").is_file(), hub_id


def test_math_train_prompts_resolve():
    from tiplight.data import read_rows

    rows = read_rows("math_train", "problem")
    assert len(rows) == 7500 and all(r["problem"] for r in rows[:10])


MODEL_FRAGMENTS = [f for f in FRAGMENTS if "lora" in f or f.startswith("quantization/")]


@pytest.mark.slow
@pytest.mark.parametrize("files", [(b,) for b in BASES] + [("toy.yaml", f) for f in MODEL_FRAGMENTS],
                         ids=lambda files: "+".join(files))
def test_model_section_loads_through_the_cli(files, packable):
    """Every shipped model section (LoRA, 4/8-bit) builds its models as `tiplight fit` does: the CLI hands
    the module plain dicts in hparams, which once crashed configure_model ('dict' has no attribute 'r').
    (Widths bitsandbytes packs in 4 bits, as the real models' are.)"""
    tiny = packable
    args = config_args(*files)
    cli = ParseOnlyCLI(args=[*args, "--model.student", tiny["student"], "--model.teacher", tiny["teacher"],
                             "--model.tokenizer", tiny["tokenizer"]], run=False)  # its own CLI: hparams come from it
    config, module = cli.config, cli.model
    assert isinstance(module.hparams.get("lora") or {}, dict)  # what the CLI hands the module
    module.configure_model()
    section = config.model
    assert hasattr(module.student, "peft_config") == (section.lora is not None)
    for quantization, model in ((section.teacher_quantization, module.teacher),
                                (section.student_quantization, module.student)):
        linear_types = {type(m).__name__ for m in model.modules()}
        assert ({"Linear4bit", "Linear8bitLt"} & linear_types != set()) == (quantization is not None)


def test_every_config_path_named_in_configs_and_docs_exists():
    import re

    root = CONFIGS.parent
    texts = [*CONFIGS.glob("**/*.yaml"), root / "README.md", *root.glob("benchmarks/*.md")]
    named = {m for path in texts for m in re.findall(r"configs/[\w/.-]+\.yaml", path.read_text())}
    assert named and not sorted(n for n in named if not (root / n).is_file())


DEEPPLANNING = {"deepplanning_qwen3_14b_to_1p7b.yaml": "Qwen/Qwen3-14B",
                "deepplanning_qwen3_32b_to_1p7b.yaml": "Qwen/Qwen3-32B"}
TABLE_7 = ["all_tokens", "entropy_sampling_50", "entropy_sampling_20", "q3_only_20", "soft_or_50", "soft_or_20"]


@pytest.mark.parametrize("base", sorted(DEEPPLANNING))
def test_deepplanning_configs_are_the_papers_agentic_pairs(base):
    from tiplight.envs import DeepPlanningTravel, EpisodeDataModule

    parsed = parse(base)
    model, data, trainer = parsed.config.model, parsed.config.data.init_args, parsed.config.trainer
    assert (model.student, model.teacher) == ("Qwen/Qwen3-1.7B", DEEPPLANNING[base])
    env = parsed.init.model.environment
    assert isinstance(env, DeepPlanningTravel) and env.test_fraction == 0.2 and env.score_rule == "fraction"
    assert isinstance(parsed.init.data, EpisodeDataModule) and data.chat_template_kwargs == {"enable_thinking": True}
    train = round(120 * 0.8)  # the benchmark's 120 English travel tasks, 80% for training
    assert trainer.max_steps == 15 * train // data.prompts_per_step  # 15 epochs
    evals = [c for c in trainer.callbacks if c.class_path.endswith("MathEvalCallback")]
    assert evals[0].init_args.benchmarks == ["environment"] and evals[0].init_args.num_samples == 16
    assert len(env.problems("train")) + len(env.problems("test")) == 2  # the synthetic database's tasks


@pytest.mark.parametrize("row", TABLE_7)
def test_table_7_selections_layer_on_the_deepplanning_configs(row):
    for base in DEEPPLANNING:
        parsed = parse(base, f"selection/{row}.yaml")
        expected = yaml.safe_load((CONFIGS / f"selection/{row}.yaml").read_text())["model"]["selector"]
        assert contains(expected, parsed.config.model.selector.as_dict())


@pytest.mark.parametrize("damage", ["missing", "malformed"])
def test_a_missing_or_malformed_deepplanning_database_is_one_sentence_at_start_up(damage, tmp_path, capsys):
    import shutil

    from tiplight.cli import main

    root = tmp_path / "travelplanning"
    if damage == "malformed":
        shutil.copytree(synthetic_deepplanning(), root)
        (root / "data" / "travelplanning_query_en.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / sorted(DEEPPLANNING)[0]), "--model.environment.init_args.root",
              str(root)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0
    assert str(root / "data" / "travelplanning_query_en.json") in err and "expected" in err

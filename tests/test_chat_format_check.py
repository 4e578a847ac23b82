"""Start-up check that teacher and student format conversations alike (chat template and EOS tokens)."""

from __future__ import annotations

import json
import shutil

import pytest
from test_cli import write_config

from tiplight.cli import main


def teacher_copy(
    tiny: dict[str, str], root, template: str | None = None, eos: list[int] | None = None
) -> str:
    """The tiny teacher with its chat template replaced, or its generation config's EOS ids."""
    out = root / "teacher"
    shutil.copytree(tiny["teacher"], out)
    if template is not None:
        config = json.loads((out / "tokenizer_config.json").read_text())
        (out / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
        (out / "chat_template.jinja").unlink(missing_ok=True)
    if eos is not None:
        config = json.loads((out / "generation_config.json").read_text())
        (out / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": eos}))
    return str(out)


def fit(tiny, prompts_file, tmp_path, teacher: str, *extra: str) -> int:
    """`tiplight fit` for one step with this teacher; its exit status."""
    config = write_config(tmp_path / "run.yaml", tiny, prompts_file)
    try:
        main(["fit", "--config", str(config), "--model.teacher", teacher, "--trainer.max_steps", "1", *extra])
    except SystemExit as done:
        return done.code
    return 0


OTHER_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}answer:"


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            dict(template=OTHER_TEMPLATE),
            "the chat templates render a conversation differently from character 3",
        ),
        (dict(eos=[2, 5]), "the EOS tokens differ (['</s>'] vs ['</s>', '2'])"),
    ],
    ids=["template", "eos"],
)
def test_a_teacher_with_another_chat_format_is_one_sentence_unless_allowed(
    tiny, prompts_file, tmp_path, capsys, change, said
):
    teacher = teacher_copy(tiny, tmp_path, **change)
    assert fit(tiny, prompts_file, tmp_path, teacher) != 0
    err = capsys.readouterr().err
    assert "model.teacher and model.student format conversations differently: " + said in err
    assert "model.allow_template_mismatch: true" in err and "Traceback" not in err
    with pytest.warns(UserWarning, match="allowed by model.allow_template_mismatch"):
        assert fit(tiny, prompts_file, tmp_path, teacher, "--model.allow_template_mismatch", "true") == 0

"""Orders per step (plan files of version 2, `[[steps]]` tables): grammar, canonical form, the orders at
each step, validation, PNG replay. The expected plans, orders and problem lines are written out by hand.
The round trip over random plans with step tables is test_plan.py's `test_dumps_loads_round_trip`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dit_explore.engine.core.layout import Layout, Stack
from dit_explore.engine.core.plan import (
    PLAN_VERSION,
    PNG_PLAN_KEY,
    Group,
    Plan,
    PlanError,
    Sampling,
    StepTable,
    dumps,
    load,
    loads,
    parse_order,
    save,
    summary,
    validate,
    validate_steps,
)

FLUX = Layout("flux", (Stack("double", "transformer_blocks", 19), Stack("single", "single_transformer_blocks", 38)))
SMALL = Layout("flux", (Stack("double", "transformer_blocks", 4), Stack("single", "single_transformer_blocks", 8)))
SD3 = Layout("sd3", (Stack("double", "transformer_blocks", 24, pre_only_last=True),))
SAVED = Path(__file__).resolve().parents[2] / "saved_plans"


def one_line(text: str, source: str = "p.toml") -> str:
    with pytest.raises(PlanError) as exc:
        loads(text, source)
    (line,) = exc.value.problems
    return line


def lines_of(exc: pytest.ExceptionInfo[PlanError]) -> list[str]:
    assert str(exc.value).split("\n") == exc.value.problems
    return exc.value.problems


# ------------------------------------------------------------------------------------------- the file

SPEC_V2 = """\
version = 2
model = "flux-schnell"
name = "full single stack early"
[order]
single = "0-9, 29-37"
[[steps]]
steps = "3"
[steps.order]
[[steps]]
steps = "1,0"
[steps.order]
single = "0-37"
double = "18-0"
[sampling]
steps = 4
"""

SPEC_V2_PLAN = Plan(
    orders=(("single", tuple(range(10)) + tuple(range(29, 38))),),
    model="flux-schnell",
    name="full single stack early",
    sampling=Sampling(steps=4),
    step_orders=(
        StepTable((0, 1), (("double", tuple(range(18, -1, -1))), ("single", tuple(range(38))))),
        StepTable((3,), ()),
    ),
)

SPEC_V2_TEXT = """\
version = 2
model = "flux-schnell"
name = "full single stack early"

[order]
single = "0-9, 29-37"

[[steps]]
steps = "0-1"
[steps.order]
double = "18-0"
single = "0-37"

[[steps]]
steps = "3"
[steps.order]

[sampling]
steps = 4
"""


def test_a_version_2_file_loads_with_its_tables_sorted_by_first_step() -> None:
    assert loads(SPEC_V2) == SPEC_V2_PLAN


def test_dumps_writes_the_tables_after_the_default_order_in_canonical_form() -> None:
    assert dumps(SPEC_V2_PLAN) == SPEC_V2_TEXT
    assert loads(SPEC_V2_TEXT) == SPEC_V2_PLAN
    assert dumps(loads(SPEC_V2_TEXT)) == SPEC_V2_TEXT
    assert PLAN_VERSION == 2 and tomllib.loads(SPEC_V2_TEXT)["steps"] == [
        {"steps": "0-1", "order": {"double": "18-0", "single": "0-37"}}, {"steps": "3", "order": {}}]


def test_a_plan_without_tables_is_version_1_byte_for_byte() -> None:
    """Every shipped plan file is exactly what dumps writes for it (its comment on top): version 1, as before."""
    files = sorted(SAVED.rglob("*.plan.toml"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        comment = "\n".join(line.removeprefix("#").removeprefix(" ") for line in text.splitlines() if line.startswith("#"))
        assert dumps(load(path), comment) == text, path
        assert re.search(r"^version = 1$", text, re.M)
    assert dumps(Plan(name="n").with_order("single", (1, 0))) == 'version = 1\nname = "n"\n\n[order]\nsingle = "1-0"\n'


def test_a_version_2_file_without_tables_is_the_version_1_plan() -> None:
    v1 = loads('version = 1\n[order]\nsingle = "0-3"\n')
    assert loads('version = 2\n[order]\nsingle = "0-3"\n') == v1
    assert loads("version = 2\nsteps = []\n") == Plan()
    assert dumps(v1).startswith("version = 1\n")


def test_empty_and_unchanged_orders_in_a_table_keep_their_meaning() -> None:
    plan = loads('version = 2\n[[steps]]\nsteps = "0"\n[steps.order]\nsingle = ""\ndouble = "0-18"\n')
    assert plan.step_orders == (StepTable((0,), (("double", tuple(range(19))), ("single", ()))),)
    assert 'single = ""' in dumps(plan) and loads(dumps(plan)) == plan


def test_save_and_load_a_version_2_plan(tmp_path: Path) -> None:
    path = save(SPEC_V2_PLAN, tmp_path / "p.plan.toml", comment="per step")
    assert path.read_text(encoding="utf-8") == "# per step\n" + SPEC_V2_TEXT
    assert load(path) == SPEC_V2_PLAN


# --------------------------------------------------------------------------------- orders at a step


def text_at(plan: Plan, layout: Layout, step: int) -> dict[str, list[Any]]:
    return {name: list(order) for name, order in plan.resolved_at(layout, step).items()}


def test_resolved_at_each_step_by_hand() -> None:
    plan = loads('version = 2\n[order]\nsingle = "0, 7"\n'
                 '[[steps]]\nsteps = "0"\n[steps.order]\ndouble = "3-0"\n'        # single: the default
                 '[[steps]]\nsteps = "2"\n[steps.order]\n'                        # the full model
                 '[[steps]]\nsteps = "4-5"\n[steps.order]\nsingle = "[1-2]x2"\n')  # double: the default (identity)
    assert text_at(plan, SMALL, 0) == {"double": [3, 2, 1, 0], "single": [0, 7]}
    assert text_at(plan, SMALL, 1) == {"double": [0, 1, 2, 3], "single": [0, 7]}
    assert text_at(plan, SMALL, 2) == {"double": [0, 1, 2, 3], "single": [0, 1, 2, 3, 4, 5, 6, 7]}
    assert text_at(plan, SMALL, 3) == {"double": [0, 1, 2, 3], "single": [0, 7]}
    assert text_at(plan, SMALL, 4) == text_at(plan, SMALL, 5) == {"double": [0, 1, 2, 3], "single": [Group((1, 2), 2)]}
    assert text_at(plan, SMALL, 6) == text_at(plan, SMALL, 1)  # after the last table: the default again
    assert [plan.table_at(s) for s in range(7)] == [0, None, 1, None, 2, 2, None]
    # The default order is what resolved() gives, whatever the tables say.
    assert text_at(plan, SMALL, 1) == {name: list(order) for name, order in plan.resolved(SMALL).items()}


def test_resolved_at_with_active_steps_is_the_plan_or_the_full_model() -> None:
    plan = Plan(orders=(("single", (0, 7)),), active_steps=(1, 3))
    assert [text_at(plan, SMALL, s)["single"] for s in range(4)] == [list(range(8)), [0, 7], list(range(8)), [0, 7]]


def test_variant_at_groups_steps_by_the_rule_that_picks_their_orders() -> None:
    plan = loads('version = 2\n[[steps]]\nsteps = "1,3"\n[steps.order]\nsingle = "0"\n')
    assert [plan.variant_at(s) for s in range(4)] == [(True, None), (True, 0), (True, None), (True, 0)]
    assert [Plan(active_steps=(1,)).variant_at(s) for s in range(3)] == [(False, None), (True, None), (False, None)]


def test_is_identity_looks_at_every_table() -> None:
    assert loads('version = 2\n[[steps]]\nsteps = "0"\n[steps.order]\n').is_identity(FLUX)
    assert loads('version = 2\n[[steps]]\nsteps = "0"\n[steps.order]\nsingle = "0-37"\n').is_identity(FLUX)
    assert not loads('version = 2\n[[steps]]\nsteps = "0"\n[steps.order]\nsingle = "0-36"\n').is_identity(FLUX)
    assert not loads('version = 2\n[[steps]]\nsteps = "0"\n[steps.order]\nsingle = ""\n').is_identity(FLUX)
    assert not SPEC_V2_PLAN.is_identity(FLUX)


def test_with_order_edits_the_default_order_and_keeps_the_tables() -> None:
    edited = SPEC_V2_PLAN.with_order("double", parse_order("0-17"))
    assert edited.step_orders == SPEC_V2_PLAN.step_orders
    assert edited.order("double") == tuple(range(18)) and edited.step_orders[0].order("double") == tuple(range(18, -1, -1))


def test_summary_names_the_default_order_and_each_table() -> None:
    assert summary(SPEC_V2_PLAN) == "single: 0-9, 29-37; at steps 0-1 (double: 18-0; single: 0-37); at steps 3 (full model)"
    assert summary(Plan()) == "full model"
    assert summary(Plan().with_order("single", (3,))) == "single: 3"


# ------------------------------------------------------------------------------------- file errors

BAD_V2_FILES = [
    # (text, the line expected, or its start and a fragment naming the token)
    ('version = 1\n[[steps]]\nsteps = "0"\n[steps.order]\n',
     "p.toml: steps: [[steps]] tables need version = 2 (this file says version = 1)"),
    ('version = 2\nactive_steps = "0"\n[[steps]]\nsteps = "1"\n[steps.order]\n',
     "p.toml: active_steps: cannot be combined with [[steps]] tables (give the steps where the full model runs a "
     "[[steps]] table with an empty [steps.order] instead)"),
    ('version = 2\n[[steps]]\nsteps = "0-3"\n[steps.order]\n[[steps]]\nsteps = "5, 3-4"\n[steps.order]\n',
     "p.toml: steps[1].steps: overlaps steps[0] at '3' (a step takes the orders of one table at most)"),
    ('version = 2\n[[steps]]\nsteps = "0"\nsingle = "1"\n[steps.order]\n',
     "p.toml: steps[0].single: unknown key (known: steps, order)"),
    ('version = 2\n[[steps]]\n[steps.order]\nsingle = "1"\n',
     'p.toml: steps[0].steps: missing (the denoising steps of the table, like "0-3")'),
    ('version = 2\n[[steps]]\nsteps = "0"\n',
     "p.toml: steps[0].order: missing (an empty [steps.order] runs the full model on these steps)"),
    ('version = 2\n[[steps]]\nsteps = 3\n[steps.order]\n',
     "p.toml: steps[0].steps: expected a string like \"0-3\", got the integer '3'"),
    ('version = 2\n[[steps]]\nsteps = "0-x"\n[steps.order]\n',
     "p.toml: steps[0].steps: syntax error: expected the end of a range at 'x' (column 3)"),
    ('version = 2\n[[steps]]\nsteps = ""\n[steps.order]\n',
     "p.toml: steps[0].steps: syntax error: expected a step index at end of text"),
    ('version = 2\n[[steps]]\nsteps = "0"\norder = "0-3"\n',
     "p.toml: steps[0].order: expected a table like [steps.order] single = \"0-37\", got the string '0-3'"),
    ('version = 2\n[[steps]]\nsteps = "0"\n[steps.order]\nsingle = "0-3,[4,4]"\n',
     "p.toml: steps[0].order.single: block 4 appears twice in a parallel group at '4' (column 8)"),
    ('version = 2\n[[steps]]\nsteps = "0"\n[steps.order]\nsingle = 5\n',
     "p.toml: steps[0].order.single: expected a string like \"0-9, 20-37\", got the integer '5'"),
    ('version = 2\nsteps = "0-3"\n',
     "p.toml: steps: expected [[steps]] tables (steps = \"0-3\" and a [steps.order] table each), got the string '0-3'"),
    ('version = 2\nsteps = [1, 2]\n',
     "p.toml: steps: expected [[steps]] tables (steps = \"0-3\" and a [steps.order] table each), got an array '[1, 2]'"),
    ('version = 2\n[steps]\nsteps = "0"\n',
     "p.toml: steps: expected [[steps]] tables (steps = \"0-3\" and a [steps.order] table each), got a table "
     "'{'steps': '0'}'"),
]


@pytest.mark.parametrize(("text", "line"), BAD_V2_FILES)
def test_a_bad_step_table_is_one_line_naming_the_table_key_and_token(text: str, line: str) -> None:
    assert one_line(text) == line


def test_a_step_in_three_tables_names_each_pair() -> None:
    with pytest.raises(PlanError) as exc:
        loads('version = 2\n[[steps]]\nsteps = "0-2"\n[steps.order]\n[[steps]]\nsteps = "2-4"\n[steps.order]\n'
              '[[steps]]\nsteps = "4, 2, 9, 0"\n[steps.order]\n', "p.toml")
    assert lines_of(exc) == [
        "p.toml: steps[1].steps: overlaps steps[0] at '2' (a step takes the orders of one table at most)",
        "p.toml: steps[2].steps: overlaps steps[0] at '0,2' (a step takes the orders of one table at most)",
        "p.toml: steps[2].steps: overlaps steps[1] at '4' (a step takes the orders of one table at most)",
    ]


def test_every_problem_of_every_table_is_reported() -> None:
    with pytest.raises(PlanError) as exc:
        loads('version = 2\n[order]\nsingle = "?"\n[[steps]]\nsteps = "0"\nx = 1\n[steps.order]\ndouble = "1*0"\n'
              '[[steps]]\nsteps = "0"\n[steps.order]\n', "p.toml")
    assert [line.split(": ")[1] for line in lines_of(exc)] == [
        "order.single", "steps[0].x", "steps[0].order.double", "steps[1].steps"]


# -------------------------------------------------------------------------------------- validation


def test_validate_checks_each_table_and_names_it_and_its_steps() -> None:
    plan = loads('version = 2\n[order]\nsingle = "0-37"\n[[steps]]\nsteps = "5-6"\n[steps.order]\nsingle = "0-40"\n'
                 '[[steps]]\nsteps = "0"\n[steps.order]\ntriple = "0"\ndouble = "19"\n')
    with pytest.raises(PlanError) as exc:
        validate(plan, FLUX, "v.toml")
    assert lines_of(exc) == [  # tables numbered in the plan's order (by first step): steps 0 first
        "v.toml: steps[0].order.double: block index out of range at '19' ('double' has 19 blocks: 0-18) "
        "(the table of steps 0)",
        "v.toml: steps[0].order.triple: unknown stack 'triple' (this model has: double, single) (the table of steps 0)",
        "v.toml: steps[1].order.single: block index out of range at '38-40' ('single' has 38 blocks: 0-37) "
        "(the table of steps 5-6)",
    ]


@pytest.mark.parametrize(("order", "fragment"), [("23, 0", "not followed by other blocks, at '23'"),
                                                  ("[22-23]", "not inside a parallel group, at '[22-23]'")])
def test_sd3_last_block_rule_holds_in_a_table(order: str, fragment: str) -> None:
    plan = loads(f'version = 2\n[[steps]]\nsteps = "1"\n[steps.order]\ndouble = "{order}"\n')
    with pytest.raises(PlanError) as exc:
        validate(plan, SD3, "s.toml")
    (line,) = lines_of(exc)
    assert line.startswith("s.toml: steps[0].order.double: block 23 returns no text stream")
    assert fragment in line and line.endswith("(the table of steps 1)")
    validate(loads('version = 2\n[[steps]]\nsteps = "1"\n[steps.order]\ndouble = "0-21, 23"\n'), SD3)


def test_validate_refuses_active_steps_with_tables_built_through_the_api() -> None:
    plan = Plan(active_steps=(0,), step_orders=(StepTable((1,)),))
    with pytest.raises(PlanError) as exc:
        validate(plan, FLUX, "api")
    (line,) = lines_of(exc)
    assert line.startswith("api: active_steps: cannot be combined with [[steps]] tables")


def test_validate_steps_checks_each_tables_steps() -> None:
    plan = loads('version = 2\n[[steps]]\nsteps = "0-1"\n[steps.order]\n[[steps]]\nsteps = "3, 7-9"\n[steps.order]\n')
    validate_steps(plan, 10)
    with pytest.raises(PlanError) as exc:
        validate_steps(plan, 4, "run.plan.toml")
    assert lines_of(exc) == ["run.plan.toml: steps[1].steps: step out of range at '7-9' (this run has 4 steps: 0-3)"]
    with pytest.raises(PlanError) as exc2:
        validate_steps(plan, 1, "r")
    assert [line.split(": ")[1] for line in lines_of(exc2)] == ["steps[0].steps", "steps[1].steps"]


# ------------------------------------------------------------------------------------------- PNGs


def test_a_png_carries_a_version_2_plan_and_replays_to_it(tmp_path: Path) -> None:
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(PNG_PLAN_KEY, dumps(SPEC_V2_PLAN, comment="prompt"))
    png = tmp_path / "img.png"
    Image.new("RGB", (4, 4)).save(png, pnginfo=info)
    assert load(png) == SPEC_V2_PLAN


def test_the_readmes_example_is_a_valid_flux_plan_that_reads_as_it_says() -> None:
    from dit_explore.engine.core.catalog import MODELS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("#### Orders per step"):]
    example = section[section.index("```toml\n") + len("```toml\n"): section.index("```\n", section.index("```toml"))]
    plan = loads(example)
    validate(plan, MODELS["flux-schnell"].layout)
    middle_skipped = list(range(10)) + list(range(29, 38))
    single = [list(plan.resolved_at(FLUX, step)["single"]) for step in range(5)]
    assert single == [list(range(38)), list(range(38)), middle_skipped, list(range(38)), middle_skipped]

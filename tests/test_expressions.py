"""Tests for the safe expression language in ``experiments.tasks.expressions``."""

import builtins
import dataclasses
import math
import os
import tempfile
import time
from pathlib import Path

import pytest
import sympy
import torch
from hypothesis import HealthCheck, assume, given, reject, settings
from hypothesis import strategies as st

from experiments.errors import ConfigError
from experiments.tasks.expressions import (
    FUNCTIONS,
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_LENGTH,
    MAX_NODES,
    Binary,
    Call,
    Constant,
    Expression,
    ExpressionError,
    Folded,
    Negate,
    Number,
    Var,
    parse,
)

X, Y = sympy.Symbol("x", real=True), sympy.Symbol("y", real=True)
SYMBOLS = {"x": X, "y": Y}
# If hostile text were ever executed, this is the file it would create.
SENTINEL = Path(tempfile.gettempdir()) / f"expressions-sentinel-{os.getpid()}"


def _at(**values: float) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(value, dtype=torch.float64) for name, value in values.items()}


def _assert_one_line_config_error(error: pytest.ExceptionInfo, key: str = "task.expr") -> None:
    message = str(error.value)
    assert isinstance(error.value, ConfigError)
    assert "\n" not in message
    assert message.startswith(key)


@pytest.mark.parametrize(
    ("text", "point", "expected"),
    [
        ("3*x**2 + 6*x - 9", {"x": 10.0}, 351.0),
        ("(1 - x)**2 + 100*(y - x**2)**2", {"x": 1.0, "y": 1.0}, 0.0),
        ("(1 - x)**2 + 100*(y - x**2)**2", {"x": -1.2, "y": 1.0}, 24.2),
        ("sin(x) * y", {"x": 0.5, "y": 3.0}, math.sin(0.5) * 3),
        ("exp(-x**2) + log(1 + y**2)", {"x": 0.7, "y": 2.0}, math.exp(-0.49) + math.log(5)),
        ("-x**2", {"x": 3.0}, -9.0),
        ("2**-1 + +x", {"x": 1.0}, 1.5),
        ("x / 4 - 1/3", {"x": 2.0}, 0.5 - 1 / 3),
        ("sqrt(x) + abs(y)", {"x": 9.0, "y": -2.0}, 5.0),
        (
            "tanh(x) + sinh(x) + cosh(x) + tan(x)",
            {"x": 0.3},
            math.tanh(0.3) + math.sinh(0.3) + math.cosh(0.3) + math.tan(0.3),
        ),
        ("asin(x) + acos(x) + atan(y)", {"x": 0.2, "y": 4.0}, math.pi / 2 + math.atan(4)),
        ("sigmoid(x)", {"x": 0.0}, 0.5),
        ("pi * e + x", {"x": 1.0}, math.pi * math.e + 1),
        ("x**y", {"x": 2.0, "y": 10.0}, 1024.0),
        ("2**100 / 2**99", {}, 2.0),
        ("  x\t+ 1 ", {"x": 1.0}, 2.0),
    ],
)
def test_good_expressions_evaluate_to_hand_computed_values(text, point, expected):
    assert parse(text).evaluate(_at(**point)).item() == pytest.approx(expected, rel=1e-12)


def test_the_tutorial_examples():
    assert parse("3*x**2 + 6*x - 9")({"x": torch.tensor(10.0)}).item() == 351.0
    assert parse("x**2*y + 3*x*y**5 + x**3").variables == ("x", "y")


@pytest.mark.parametrize(
    ("text", "variables"),
    [("y*x + z", ("y", "x", "z")), ("pi*x + e", ("x",)), ("sin(b) + a*b", ("b", "a")), ("2", ())],
)
def test_variables_are_listed_in_order_of_first_appearance(text, variables):
    assert parse(text).variables == variables


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("x.__class__", "attribute access is not allowed: 'x.__class__'"),
        ("x[0]", "subscript is not allowed"),
        ("__import__('os')", "unknown function '__import__'"),
        ("open('f')", "unknown function 'open'.*allowed: abs, acos"),
        ("foo(x)", r"unknown function 'foo' in 'foo\(x\)'"),
        ("(lambda: 1)()", "only calls of named functions"),
        ("lambda: 1", "lambda is not allowed"),
        ("[x for x in y]", "comprehension is not allowed"),
        ("sum(x for x in y)", "unknown function 'sum'"),
        ("'x'", "string literal is not allowed"),
        ("b'x'", "string literal is not allowed"),
        ("x < 1", "comparison is not allowed"),
        ("x and y", "boolean operator is not allowed"),
        ("not x", "only unary"),
        ("f'{x}'", "f-string is not allowed"),
        ("(y := x)", "assignment expression"),
        ("sin(*x)", "starred argument is not allowed"),
        ("sin(x=1)", "keyword arguments are not allowed"),
        ("sin(x, y)", "exactly one argument, got 2"),
        ("sin()", "exactly one argument, got 0"),
        ("x; y", "does not parse"),
        ("import os", "does not parse"),
        ("x +", "does not parse"),
        ("x\0", "does not parse"),
        ("x if y else 1", "conditional expression is not allowed"),
        ("(x, y)", "tuple is not allowed"),
        ("x // 2", r"only the operators \+ - \* / \*\* are allowed"),
        ("x % 2", "only the operators"),
        ("x @ y", "only the operators"),
        ("~x", "only unary"),
        ("True + x", "bool literal is not allowed"),
        ("1j * x", "complex literal is not allowed"),
        ("None", "literal is not allowed"),
        ("_x + 1", "names starting with '_'"),
        ("sin + 1", "function 'sin' must be called"),
        ("x**101", "exponent 101 is too large"),
        ("x**-101", "exponent -101 is too large"),
        ("1e400 * x", "number is too large"),
        ("9" * 400, "number is too large"),
        ("log(0) + x", "not a finite number: 'log\\(0\\)'"),
        ("x / (1 - 1)**-1", "not a finite number"),
        ("sqrt(-1)", "not a finite number"),
        ("", "is empty"),
        ("   ", "is empty"),
    ],
)
def test_refused_constructs_raise_a_one_line_config_error(text, match):
    with pytest.raises(ExpressionError, match=match) as error:
        parse(text)
    _assert_one_line_config_error(error)


def test_errors_name_the_key_they_are_given():
    with pytest.raises(ConfigError, match=r"^task\.loss: unknown function 'foo'") as error:
        parse("foo(x)", key="task.loss")
    _assert_one_line_config_error(error, key="task.loss")


def test_non_string_text_is_refused():
    with pytest.raises(ConfigError, match="task.expr must be a string, got int"):
        parse(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    ["9**9**9**9", "2**2**2**2**2**2**2", "2**(2**100)", "(10**10)**(10**10)", "x**(9**9**9)"],
)
def test_power_towers_are_refused_at_once(text):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="exponent .* is too large") as error:
        parse(text)
    assert time.perf_counter() - start < 0.5
    _assert_one_line_config_error(error)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("x" * 1_000_000, f"1000000 characters long; at most {MAX_LENGTH}"),
        ("(" * 400 + "x" + ")" * 400, f"brackets nested deeper than {MAX_DEPTH}"),
        ("sin(" * 120 + "x" + ")" * 120, f"brackets nested deeper than {MAX_DEPTH}"),
        ("-" * 500 + "x", f"nesting deeper than {MAX_DEPTH}"),
        ("+".join(["x"] * 300), f"nesting deeper than {MAX_DEPTH}"),
        ("x" + "**x" * 200, f"nesting deeper than {MAX_DEPTH}"),
    ],
)
def test_huge_or_deep_input_is_refused_quickly(text, match):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=match) as error:
        parse(text)
    assert time.perf_counter() - start < 0.5
    _assert_one_line_config_error(error)


def test_too_many_nodes_are_refused():
    def balanced(leaves: int) -> str:
        return "x" if leaves == 1 else f"({balanced(leaves // 2)}+{balanced(leaves // 2)})"

    parse(balanced(64))  # 127 nodes, fine
    with pytest.raises(ConfigError, match=f"more than {MAX_NODES} operations") as error:
        parse(balanced(128))
    _assert_one_line_config_error(error)


def test_large_constant_exponents_within_the_bound_are_fine():
    assert parse(f"2**{MAX_EXPONENT:g}").evaluate({}).item() == 2.0**100
    assert parse("x**-100").evaluate(_at(x=2.0)).item() == 2.0**-100


def test_missing_variable_is_a_config_error_and_extra_keys_are_ignored():
    expression = parse("x * y")
    with pytest.raises(ConfigError, match="task.expr: no value for variable 'y'") as error:
        expression.evaluate(_at(x=1.0))
    _assert_one_line_config_error(error)
    assert expression.evaluate(_at(x=2.0, y=3.0, z=4.0)).item() == 6.0


def test_batched_evaluation_over_a_grid():
    xs, ys = torch.meshgrid(torch.linspace(-2, 2, 5), torch.linspace(-1, 3, 7), indexing="ij")
    result = parse("(1 - x)**2 + 100*(y - x**2)**2").evaluate({"x": xs, "y": ys})
    assert result.shape == (5, 7)
    torch.testing.assert_close(result, (1 - xs) ** 2 + 100 * (ys - xs**2) ** 2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_results_keep_the_input_dtype(dtype):
    x = torch.tensor([0.5, 1.5], dtype=dtype)
    assert parse("exp(-x**2) + pi/3").evaluate({"x": x}).dtype == dtype
    assert parse("2*pi").evaluate({"x": x}).dtype == dtype  # no variables: adopts the inputs'


def test_autograd_gives_higher_derivatives():
    x = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    value = parse("x**3 + sin(x)").evaluate({"x": x})
    (first,) = torch.autograd.grad(value, x, create_graph=True)
    (second,) = torch.autograd.grad(first, x, create_graph=True)
    (third,) = torch.autograd.grad(second, x)
    assert first.item() == pytest.approx(12 + math.cos(2.0))
    assert second.item() == pytest.approx(12 - math.sin(2.0))
    assert third.item() == pytest.approx(6 - math.cos(2.0))


def test_to_sympy_is_exact_and_uses_real_symbols_by_default():
    expression = parse("x/3 + 2**-1 + sigmoid(y) + pi")
    assert (
        expression.to_sympy() == X / 3 + sympy.Rational(1, 2) + 1 / (1 + sympy.exp(-Y)) + sympy.pi
    )
    assert parse("sqrt(x**2)").to_sympy() == sympy.Abs(X)  # only true for real x


def test_to_sympy_uses_the_symbols_it_is_given():
    t = sympy.Symbol("t", positive=True)
    assert parse("sqrt(x**2) + y").to_sympy({"x": t}) == t + Y


def test_no_eval_or_exec_is_involved(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    expression = parse("exp(-x**2) + log(1 + y**2)")
    assert expression.evaluate(_at(x=0.0, y=0.0)).item() == 1.0
    assert expression.to_sympy() == sympy.exp(-(X**2)) + sympy.log(1 + Y**2)


def test_expression_is_immutable_and_compares_by_text():
    expression = parse("x + 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        expression.text = "x + 2"  # type: ignore[misc]
    assert expression == parse("x + 1")
    assert isinstance(expression, Expression)
    assert set(FUNCTIONS) >= {"sin", "cos", "exp", "log", "sqrt", "tanh", "abs", "sigmoid"}


# Property tests. A case is (text, sub-expression texts); the sub-expressions give the scale of the
# intermediate values, which bounds the rounding error torch can make in float64.


def _leaf(text: str) -> tuple[str, tuple[str, ...]]:
    return text, (text,)


def _apply(name: str, child: tuple) -> tuple[str, tuple[str, ...]]:
    text = f"-({child[0]})" if name == "-" else f"{name}({child[0]})"
    return text, (*child[1], text)


def _combine(op: str, left: tuple, right: tuple) -> tuple[str, tuple[str, ...]]:
    text = f"({left[0]}){op}({right[0]})"
    return text, (*left[1], *right[1], text)


def _power(child: tuple, exponent: str) -> tuple[str, tuple[str, ...]]:
    text = f"({child[0]})**{exponent}"
    return text, (*child[1], text)


# Half the leaves are variables, so most cases have something to differentiate.
LEAVES = st.one_of(
    st.sampled_from(["x", "y"]), st.sampled_from(["pi", "e", "1", "2", "3", "0.5", "1.25"])
).map(_leaf)
EXPRESSIONS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.builds(_apply, st.sampled_from([*sorted(FUNCTIONS), "-"]), children),
        st.builds(_combine, st.sampled_from("+-*/"), children, children),
        st.builds(_combine, st.just("**"), children, children),
        st.builds(_power, children, st.sampled_from(["2", "3", "0.5", "-1"])),
    ),
    max_leaves=6,
)
# Dyadic points: sums with the small literals above are exact, so rounding stays small.
POINTS = st.integers(-40, 40).map(lambda k: k / 16)
FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)


def _parse_or_reject(text: str) -> Expression:
    try:
        return parse(text)
    except ConfigError as error:  # e.g. log(0) or exp(exp(9)) folded to a non-finite constant
        assert "not a finite number" in str(error) or "exponent" in str(error)
        reject()


def _scale(subs: tuple[str, ...], point: dict[str, torch.Tensor]) -> float:
    """The largest intermediate value; skip cases where one is non-finite or huge."""
    scale = 1.0
    for sub in subs:
        value = _parse_or_reject(sub).evaluate(point).item()
        assume(math.isfinite(value) and abs(value) < 1e12)
        scale = max(scale, abs(value))
    return scale


def _sympy_value(expr: sympy.Expr, x: float, y: float) -> float:
    exact = expr.subs({X: sympy.Rational(x), Y: sympy.Rational(y)})
    try:
        value = complex(exact.evalf(30))
    except (TypeError, ValueError, OverflowError):  # zoo, nan, or out of range
        reject()
    assume(abs(value.imag) < 1e-12 and math.isfinite(value.real))
    return value.real


@FAST
@given(EXPRESSIONS, POINTS, POINTS)
def test_torch_agrees_with_sympy(case, x, y):
    text, subs = case
    expression = _parse_or_reject(text)
    point = _at(x=x, y=y)
    scale = _scale(subs, point)
    actual = expression.evaluate(point).item()
    expected = _sympy_value(expression.to_sympy(SYMBOLS), x, y)
    assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9 * scale), text


@FAST
@given(EXPRESSIONS, POINTS, POINTS)
def test_autograd_agrees_with_sympy_diff(case, x, y):
    text, subs = case
    expression = _parse_or_reject(text)
    assume(expression.variables)
    point = {name: tensor.requires_grad_() for name, tensor in _at(x=x, y=y).items()}
    scale = _scale(subs, {name: tensor.detach() for name, tensor in point.items()})
    inputs = [point[name] for name in expression.variables]
    grads = torch.autograd.grad(expression.evaluate(point), inputs)
    for name, grad in zip(expression.variables, grads, strict=True):
        actual = grad.item()
        assume(math.isfinite(actual) and abs(actual) < 1e12)
        expected = _sympy_value(sympy.diff(expression.to_sympy(SYMBOLS), SYMBOLS[name]), x, y)
        tolerance = 1e-8 * max(scale, abs(expected))
        assert math.isclose(actual, expected, rel_tol=1e-8, abs_tol=tolerance), (text, name)


HOSTILE_TOKENS = [
    *"""__ . import lambda [ ] ' " os open( ( ) , : = := * ** + - / ; # \\ { } f' x y 1 9 e pi
    sin( exp( __import__ __class__ __subclasses__() __builtins__ globals() system eval( exec(
    not if else for in 1e999 True""".split(),
    " ",
    "\n",
    "\0",
    f"open({str(SENTINEL)!r}, 'w')",
]
HOSTILE = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(HOSTILE_TOKENS), max_size=20).map("".join),
)
NODE_TYPES = (Number, Constant, Var, Negate, Binary, Call, Folded)


def _assert_only_whitelisted(node) -> None:
    assert isinstance(node, NODE_TYPES)
    if isinstance(node, Call):
        assert node.name in FUNCTIONS
    if isinstance(node, Var):
        assert node.name.isidentifier() and not node.name.startswith("_")
        assert node.name not in FUNCTIONS
    for item in dataclasses.fields(node):
        child = getattr(node, item.name)
        if isinstance(child, NODE_TYPES):
            _assert_only_whitelisted(child)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(HOSTILE)
def test_hostile_text_is_refused_or_harmless(text):
    try:
        expression = parse(text)
    except ConfigError as error:
        assert "\n" not in str(error) and str(error).startswith("task.expr")
    else:
        _assert_only_whitelisted(expression.tree)
        values = {name: torch.tensor(1.5) for name in expression.variables}
        assert isinstance(expression.evaluate(values), torch.Tensor)
        expression.to_sympy()
    assert not SENTINEL.exists()

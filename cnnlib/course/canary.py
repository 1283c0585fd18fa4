"""Negative canaries: twins of a graded test cell that a correct answer must *fail*.

A kernel runs the student's code, so anything inside it can lie: an input or AST transformer can
turn ``assert`` into ``pass``, a ``post_run_cell`` hook can clear the error, a patched
``torch.testing.assert_close`` or ``abs`` can accept anything, an object whose ``__eq__`` is always
true equals every expected value, an "oracle" can read the calling test line and return whatever
it expects. Each of these makes a *wrong* assertion pass as well. So after every graded test the
grader runs its twins in the same kernel:

- the **negated** twin: every ``assert X`` becomes ``assert not (X)``;
- the **perturbed** twin: inside every assertion (``assert`` statements and ``assert_*`` calls)
  every number is moved by a random amount drawn anew for each run, and every expected value
  that is not a literal is passed through a random shift (``x == f(y)`` → ``x == shift(f(y))``).

A correct answer fails both (the first assertion already fails). The grader checks that on the
reference solution before it trusts a twin (``useful`` twins only), so an honest submission is
never suspected because of a test that could not tell. If a twin passes in a student's kernel,
the kernel is lying and the submission is ``tampered``.

What this does not stop: a student who studies this module and writes an attack that recognises
the twins (they differ from the real test in numbers the kernel can see). The sandbox limits what
such a student can reach; the threat model in the README says so.
"""
from __future__ import annotations

import ast
import random
import secrets


def _is_assert_call(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return False
    f = node.value.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return name.startswith("assert")


class _Negate(ast.NodeTransformer):
    def __init__(self):
        self.count = 0

    def visit_Assert(self, node):
        self.count += 1
        return ast.copy_location(ast.Assert(ast.UnaryOp(ast.Not(), node.test), node.msg), node)


class _Numbers(ast.NodeTransformer):
    """Moves every int/float literal (bools stay) by a random nonzero amount."""

    def __init__(self, rng: random.Random):
        self.rng, self.count = rng, 0

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return node
        self.count += 1
        if isinstance(v, int):
            new = v + self.rng.choice([-1, 1]) * self.rng.randint(1, 9)
        else:
            new = v * (1 + self.rng.choice([-1, 1]) * self.rng.uniform(0.2, 0.8)) + self.rng.uniform(0.1, 0.9)
        return ast.copy_location(ast.Constant(new), node)


class _Perturb(ast.NodeTransformer):
    def __init__(self, rng: random.Random, shift: str):
        self.rng, self.shift, self.count = rng, shift, 0

    def _numbers(self, node):
        t = _Numbers(self.rng)
        node = t.visit(node)
        self.count += t.count
        return node

    def _shifted(self, expr):
        self.count += 1
        return ast.Call(ast.Name(self.shift, ast.Load()), [expr], [])

    def visit_Assert(self, node):
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq) \
                and not isinstance(test.comparators[0], ast.Constant):
            test = ast.Compare(test.left, test.ops, [self._shifted(test.comparators[0])])
        return ast.copy_location(ast.Assert(self._numbers(test), node.msg), node)

    def visit_Expr(self, node):
        if not _is_assert_call(node):
            return node
        call = node.value
        args = list(call.args)
        if len(args) >= 2 and not isinstance(args[1], ast.Constant):
            args[1] = self._shifted(args[1])
        call = ast.Call(call.func, [self._numbers(a) for a in args], call.keywords)
        return ast.copy_location(ast.Expr(call), node)


# The shift a perturbed twin applies to an expected value that is not a literal: a different
# value of the same kind (numbers, tensors, arrays, sequences of them); anything else becomes an
# object equal to nothing.
_SHIFT = '''
def {name}(v, _d={delta!r}):
    import numbers
    if isinstance(v, bool):
        return not v
    if isinstance(v, numbers.Number):
        return v + _d if isinstance(v, numbers.Integral) else v * (1 + _d / 7) + _d / 3
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return v + _d if "int" in str(v.dtype) else v * (1 + _d / 7) + _d / 3
    if isinstance(v, (tuple, list)):
        return type(v)({name}(x) for x in v) if v else type(v)([object()])
    return object()
'''


def twins(source: str, seed: int | None = None) -> list[str]:
    """The negated and the perturbed twin of a test cell (those that change anything), as cell
    sources. ``seed`` fixes the random amounts (tests); by default they are fresh each run."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    rng = random.Random(seed if seed is not None else secrets.randbits(64))
    out = []
    neg = _Negate()
    negated = neg.visit(ast.parse(source))
    if neg.count:
        out.append(ast.unparse(ast.fix_missing_locations(negated)))
    shift = f"_shift_{rng.randrange(16 ** 8):08x}"
    per = _Perturb(rng, shift)
    perturbed = per.visit(tree)
    if per.count:
        delta = rng.choice([-1, 1]) * rng.randint(3, 97)
        out.append(_SHIFT.format(name=shift, delta=delta).strip() + "\n" +
                   ast.unparse(ast.fix_missing_locations(perturbed)))
    return out


# ---------------------------------------------------------------------------- interpreter hooks

# Run once before any student code (``baseline``) and before every graded test (``check``): it
# raises if the kernel gained what lets code rewrite or silence a test — input or AST
# transformers, event callbacks, trace/profile functions, exception hooks defined in a notebook
# cell, replaced builtins or testing functions. A kernel can fake this check too; the twins are
# what cannot be faked cheaply, this names *what* was seen when it is not faked.
_BASELINE = '''
def {name}():
    import builtins, sys
    ip = get_ipython()
    return dict(builtins=dict(vars(builtins)), excepthook=sys.excepthook, custom=ip.custom_exceptions,
                post=list(ip.input_transformers_post), cleanup=list(ip.input_transformers_cleanup),
                ast=list(ip.ast_transformers), events={{k: list(v) for k, v in ip.events.callbacks.items()}})
{name}_0 = {name}()
'''

_CHECK = '''
def {name}_check():
    import sys
    now, then, seen = {name}(), {name}_0, []
    trusted = tuple({{sys.prefix, sys.base_prefix}})
    def from_cell(f):
        f = getattr(f, "__func__", f)
        code = getattr(f, "__code__", None) or getattr(getattr(type(f), "__call__", None), "__code__", None)
        return code is not None and not code.co_filename.startswith(trusted)
    for key, what in (("post", "an input transformer"), ("cleanup", "an input transformer"),
                      ("ast", "an AST transformer")):
        if any(from_cell(f) for f in now[key] if f not in then[key]):
            seen.append(what)
    for event, callbacks in now["events"].items():
        if any(from_cell(f) for f in callbacks if f not in then["events"].get(event, [])):
            seen.append(f"a {{event}} event callback")
    if sys.gettrace() is not None or sys.getprofile() is not None:
        seen.append("a trace or profile function")
    if from_cell(now["excepthook"]) or now["custom"] != then["custom"]:
        seen.append("an exception hook")
    seen += [f"builtins.{{n}} replaced" for n, v in then["builtins"].items()
             if now["builtins"].get(n) is not v and from_cell(now["builtins"].get(n))]
    for module, names in (("torch.testing", ("assert_close",)), ("numpy.testing", ("assert_allclose", "assert_array_equal"))):
        m = sys.modules.get(module)
        for n in names:
            f = getattr(m, n, None) if m is not None else None
            if f is not None and from_cell(f):
                seen.append(f"{{module}}.{{n}} replaced")
    if seen:
        raise RuntimeError("tampering: " + "; ".join(dict.fromkeys(seen)))
{name}_check()
'''


def hook_cells(seed: int | None = None) -> tuple[str, str]:
    """(baseline, check): the cell that records the kernel's pristine hooks and the cell that
    raises ``RuntimeError("tampering: …")`` when they changed; names random per run."""
    rng = random.Random(seed if seed is not None else secrets.randbits(64))
    name = f"_grader_{rng.randrange(16 ** 10):010x}"
    return _BASELINE.format(name=name).strip(), _CHECK.format(name=name).strip()

"""A study's verdicts: each claim judged over seeds, by a stated test, never by one number against another.

Every run of a study is trained with several seeds. A rule reads each measure
as the values of its seeds and decides with a test that takes their spread into
account:

- `differs(a, b)`: Welch's t-test, two-sided, at 5%: a is lower or higher than b
  only when p < 0.05; else the difference is inside the seeds' spread;
- `beyond(a, limit)`: the 95% t-interval of a's mean lies wholly on one side of a limit;
- `equivalent(a, b, margin)`: the 95% Welch interval of mean(a) − mean(b) lies wholly
  inside ±margin × mean(b) (equivalence), or wholly outside it (a real difference).

A claim is **supported** or **not supported** only when its tests decide; when
any of them is inside the spread it is **inconclusive**, and with one seed a side
there is no spread to judge by, so it is inconclusive too. A claim with a run
missing, a number unavailable or a stand-in dataset is **not measured**.

Every test also says how far it is from flipping (`Test.distance`, in units of
its fragility band: p within [0.01, 0.10], an interval edge within 10% of its
limit, an equivalence interval within 10% of its margin). A verdict whose
deciding test is inside the band is **fragile**: another seed, CPU or fused
group may flip it (docs/design.md, "Fragile verdicts").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import stats

ALPHA = 0.05
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_MEASURED = "supported", "not supported", "inconclusive", "not measured"
STATUSES = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, NOT_MEASURED)
SEED_MARK = "+s"  # the label of seed k > 0 of a run: <label>+s<k>
SNAPSHOT_MARK = "@snapshot"  # the same run's generator kept at its snapshot iteration

Metrics = dict[str, dict[str, float]]  # run label (per seed, or @snapshot) → evaluation metrics


FRAGILE_P = (0.01, 0.10)  # a Welch p-value in this band could cross ALPHA with another seed or CPU
FRAGILE_EDGE = 0.10  # an interval edge this close to its limit (as a share of the limit, or of a margin)


@dataclass(frozen=True)
class Verdict:
    status: str  # one of STATUSES
    evidence: str
    fragile: bool = False  # its deciding test is inside the fragility band
    deciding: str = ""  # the deciding test: its statistic and its distance to the threshold
    spaces: str = ""  # for a claim decided in fd_flowers: what the same rule says in fd_effnet
    seeds: dict[str, tuple[float, ...]] = field(default_factory=dict)  # "run: measure" → each seed's value read


class NotMeasured(Exception):
    """A rule's number is missing (e.g. fd_flowers unavailable): the claim is not measured, not refuted."""


def base_label(label: str) -> str:
    """The run a seed's label belongs to: `arch1-sgd+s2` → `arch1-sgd` (a snapshot keeps its mark)."""
    snapshot = label.endswith(SNAPSHOT_MARK)
    core = label.removesuffix(SNAPSHOT_MARK).split(SEED_MARK)[0]
    return core + (SNAPSHOT_MARK if snapshot else "")


class Evidence:
    """The runs' metrics grouped by run, each measure as the values of its seeds (in seed order)."""

    def __init__(self, results: Metrics, instead: dict[str, str] | None = None):
        self.by_run: dict[str, list[dict[str, float]]] = {}
        self.read: dict[str, tuple[float, ...]] = {}  # what a rule read, for the report's strips of seeds
        self.instead = instead or {}  # a measure read in another's place: fd_effnet for fd_flowers
        for label in sorted(results, key=_seed_order):
            self.by_run.setdefault(base_label(label), []).append(results[label])

    def values(self, run: str, key: str) -> np.ndarray:
        key = self.instead.get(key, key)
        seeds = self.by_run.get(run, [])
        values = [s.get(key) for s in seeds]
        if not values or any(v is None or not math.isfinite(v) for v in values):
            raise NotMeasured(f"{run} has no {key}")
        self.read[f"{run}: {key}"] = tuple(float(v) for v in values)
        return np.asarray(values, np.float64)


def _seed_order(label: str) -> tuple[str, int]:
    core = label.removesuffix(SNAPSHOT_MARK)
    return (base_label(label), int(core.split(SEED_MARK)[1]) if SEED_MARK in core else 0)


def spread(values: np.ndarray, digits: int = 2) -> str:
    """mean ± sd (n seeds), as the report prints every number."""
    sd = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
    return f"{values.mean():.{digits}f}{sd} (n={len(values)})"


@dataclass(frozen=True)
class Test:
    """One test's outcome: "yes", "no" or "inside the spread", what it said, and how far it is from flipping
    (`distance` in units of its fragility band: below 1, another seed or CPU may flip it; inf: it cannot)."""

    outcome: str
    said: str
    distance: float = math.inf
    margin: str = ""  # the statistic against its threshold, as the report's margin column shows it

    @property
    def fragile(self) -> bool:
        return bool(self.distance < 1)  # a plain bool: findings.json holds it


YES, NO, UNSURE = "yes", "no", "inside the spread"


def _p_distance(p: float) -> float:
    """How far a p-value is from crossing ALPHA, in units of the band FRAGILE_P (log scale, where p lives)."""
    low, high = FRAGILE_P
    if p < ALPHA:
        return math.log(ALPHA / max(p, 1e-300)) / math.log(ALPHA / low)
    return math.log(p / ALPHA) / math.log(high / ALPHA)


def _edge_distance(gap: float, scale: float) -> float:
    """How far an interval edge is from its limit, in units of FRAGILE_EDGE × scale."""
    return abs(gap) / max(FRAGILE_EDGE * abs(scale), 1e-12)


def lower(a: np.ndarray, b: np.ndarray) -> Test:
    """Is a's mean lower than b's? Welch's t-test, two-sided at 5%."""
    if min(len(a), len(b)) < 2:
        return Test(UNSURE, "one seed a side: no spread to test against")
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        outcome = UNSURE if a[0] == b[0] else (YES if a[0] < b[0] else NO)
        return Test(outcome, "no spread in either (identical seeds)")
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    margin = f"Welch p={p:.3f} against {ALPHA:g}"
    if p >= ALPHA:
        return Test(UNSURE, f"Welch p={p:.2f}", _p_distance(p), margin)
    return Test(YES if a.mean() < b.mean() else NO, f"Welch p={p:.3f}", _p_distance(p), margin)


def higher(a: np.ndarray, b: np.ndarray) -> Test:
    return lower(b, a)


SHARE_FLOOR = 1e-3  # a share of 0 or 1 taken as this far inside (0, 1), so its logit is finite


def interval(a: np.ndarray, share: bool = False) -> tuple[float, float]:
    """The 95% t-interval of a's mean; for a share (a fraction of samples), computed on the logit scale and
    mapped back, so that it stays inside [0, 1] (a t-interval on three small shares runs below 0)."""
    if share:
        odds = np.log(np.clip(a, SHARE_FLOOR, 1 - SHARE_FLOOR) / (1 - np.clip(a, SHARE_FLOOR, 1 - SHARE_FLOOR)))
        low, high = interval(odds)
        return float(1 / (1 + math.exp(-low))), float(1 / (1 + math.exp(-high)))
    half = stats.t.ppf(1 - ALPHA / 2, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))
    return float(a.mean() - half), float(a.mean() + half)


def below(a: np.ndarray, limit: float, share: bool = False) -> Test:
    """Is a's mean below `limit`, beyond its 95% interval? (`share`: a is a fraction, `interval`'s logit.)"""
    if len(a) < 2:
        return Test(UNSURE, "one seed: no spread to test against")
    low, high = interval(a, share)
    said = f"95% interval [{low:.3g}, {high:.3g}] against {limit:.3g}"
    outcome = YES if high < limit else NO if low > limit else UNSURE
    edge = {YES: high, NO: low}.get(outcome, high if high - limit < limit - low else low)
    return Test(outcome, said, _edge_distance(edge - limit, limit),
                f"interval edge {edge:.3g} against the limit {limit:.3g} ({abs(edge - limit) / abs(limit or 1):.0%} "
                "of it away)")


def negated(test: Test, unsure: str = UNSURE) -> Test:
    """The opposite question's answer: yes ↔ no; inside the spread stays `unsure`."""
    return replace(test, outcome={YES: NO, NO: YES}.get(test.outcome, unsure))


def above(a: np.ndarray, limit: float, share: bool = False) -> Test:
    return negated(below(a, limit, share))


def equivalent(a: np.ndarray, b: np.ndarray, margin: float) -> Test:
    """Is mean(a) within ±margin × mean(b) of mean(b)? The 95% Welch interval of the difference decides."""
    if min(len(a), len(b)) < 2:
        return Test(UNSURE, "one seed a side: no spread to test against")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / max(va**2 / (len(a) - 1) + vb**2 / (len(b) - 1), 1e-300) if se > 0 else 1e9
    half = stats.t.ppf(1 - ALPHA / 2, dof) * se
    diff, bound = float(a.mean() - b.mean()), margin * abs(float(b.mean()))
    said = f"difference {diff / abs(b.mean()):+.0%} (95% interval ±{half / abs(b.mean()):.0%}, margin ±{margin:.0%})"
    far, near = (abs(diff) + half) / abs(b.mean()), (abs(diff) - half) / abs(b.mean())
    outcome = YES if abs(diff) + half <= bound else NO if abs(diff) - half > bound else UNSURE
    edge = {YES: far, NO: near}.get(outcome, far if far - margin < margin - near else near)
    return Test(outcome, said, _edge_distance(edge - margin, margin),
                f"interval edge {edge:.0%} against the margin {margin:.0%}")


def decide(tests: list[Test], evidence: str) -> Verdict:
    """Supported when every test says yes; not supported when one says no; else inconclusive. The deciding test:
    the weakest yes, the strongest no, or the undecided test nearest to deciding; the verdict is fragile when
    that test is inside its band."""
    said = "; ".join(t.said for t in tests)
    noes, unsure = [t for t in tests if t.outcome == NO], [t for t in tests if t.outcome == UNSURE]
    if noes:
        status, deciding = NOT_SUPPORTED, max(noes, key=lambda t: t.distance)
    elif not unsure:
        status, deciding = SUPPORTED, min(tests, key=lambda t: t.distance)
    else:
        status, deciding = INCONCLUSIVE, min(unsure, key=lambda t: t.distance)
    return Verdict(status, f"{evidence} [{said}]", deciding.fragile, deciding.margin or deciding.said)


Rule = Callable[[Evidence], Verdict]
OTHER_SPACE = {"fd_flowers": "fd_effnet"}  # each feature space is blind somewhere (docs/design.md): read both


def judged(rule: Rule, results: Metrics) -> Verdict:
    """The rule's verdict, with each seed's value it read; a rule that reads fd_flowers is judged again with
    fd_effnet in its place, and the verdict says whether the two spaces agree (it stays fd_flowers')."""
    evidence = Evidence(results)
    verdict = replace(rule(evidence), seeds=evidence.read)
    if not any(name.endswith(f": {key}") for name in evidence.read for key in OTHER_SPACE):
        return verdict
    try:
        other = rule(Evidence(results, OTHER_SPACE))
        spaces = ("fd_effnet agrees" if other.status == verdict.status else
                  f"in fd_effnet it is {other.status}: the two feature spaces disagree")
    except NotMeasured:
        spaces = "fd_effnet not measured"
    return replace(verdict, evidence=f"{verdict.evidence} (decided in fd_flowers; {spaces})", spaces=spaces)


# --- the source study's rules: one per claim, each decided by tests over seeds -------------------------------------

A1, A2 = "f17-color-arch1", "f17-color-arch2"


def collapse(e: Evidence) -> Verdict:
    """Architecture 2's samples are mostly yellow or purple, well beyond those colours' share of the photos."""
    shares = e.values(A2, "share_yellow") + e.values(A2, "share_purple")
    real = float((e.values(A2, "real_share_yellow") + e.values(A2, "real_share_purple")).mean())
    return decide([above(shares, 0.5, share=True), above(shares, 1.25 * real, share=True)],
                  f"arch2's samples yellow or purple {spread(shares)} (real photos {real:.2f})")


def batch_size(e: Evidence) -> Verdict:
    """Batch 8 and batch 32 reach a worse fd_flowers than batch 16 at the same iterations and schedule."""
    fd16, fd8, fd32 = (e.values(run, "fd_flowers") for run in ("arch2-batch16", "arch2-batch8", "arch2-batch32"))
    return decide([higher(fd8, fd16), higher(fd32, fd16)],
                  f"fd_flowers at 10,000 iterations: batch 8 {spread(fd8)}, 16 {spread(fd16)}, 32 {spread(fd32)} "
                  "(lower is better)")


def no_memorization(e: Evidence) -> Verdict:
    """Fewer than 5% of either architecture's samples are near-copies of a training photo."""
    a1, a2 = e.values(A1, "near_copy_share_pixels"), e.values(A2, "near_copy_share_pixels")
    return decide([below(a1, 0.05, share=True), below(a2, 0.05, share=True)],
                  f"near-copies of training photos: arch1 {spread(a1, 3)}, arch2 {spread(a2, 3)}")


def arch1_diversity(e: Evidence) -> Verdict:
    """Architecture 1 covers more of the photos (recall) than architecture 2, and makes white flowers at least
    half as often as the photos show them."""
    recall1, recall2 = e.values(A1, "recall"), e.values(A2, "recall")
    white, real_white = e.values(A1, "share_white"), float(e.values(A1, "real_share_white").mean())
    return decide([higher(recall1, recall2), above(white, real_white / 2, share=True)],
                  f"recall arch1 {spread(recall1)} vs arch2 {spread(recall2)}; arch1's samples white "
                  f"{spread(white)} (real photos {real_white:.2f})")


def smoothness(e: Evidence) -> Verdict:
    """Architecture 1's samples carry less checkerboard (period-2 energy) and less blockiness (steps at 2- and
    4-pixel block edges) than architecture 2's, each over the photos' own."""
    c1, c2 = e.values(A1, "checkerboard_ratio"), e.values(A2, "checkerboard_ratio")
    b1, b2 = e.values(A1, "blockiness_ratio"), e.values(A2, "blockiness_ratio")
    return decide([lower(c1, c2), lower(b1, b2)],
                  f"over the photos' own (1 = like photos): checkerboard arch1 {spread(c1)}, arch2 {spread(c2)}; "
                  f"blockiness arch1 {spread(b1)}, arch2 {spread(b2)}")


def dropout(e: Evidence) -> Verdict:
    """Dropout in architecture 1 makes fd_flowers worse."""
    base, dropped = e.values(A1, "fd_flowers"), e.values("arch1-dropout", "fd_flowers")
    return decide([higher(dropped, base)], f"fd_flowers without dropout {spread(base)}, with dropout 0.3 "
                                           f"{spread(dropped)}")


NOMINAL_RUNS = ("arch1-labels-0.9-0.1", "arch1-labels-0.8-0.2", "arch1-mbd-doubled", "arch1-mbd-off",
                "arch1-rmsprop", "arch1-sgd", "arch1-uniform-noise")


def nominal(e: Evidence) -> Verdict:
    """Each change moves fd_flowers by less than 25% of architecture 1's (an equivalence test per change)."""
    base = e.values(A1, "fd_flowers")
    tests = [equivalent(e.values(run, "fd_flowers"), base, 0.25) for run in NOMINAL_RUNS]
    listed = ", ".join(f"{run} {spread(e.values(run, 'fd_flowers'))}" for run in NOMINAL_RUNS)
    return decide(tests, f"fd_flowers against arch1's {spread(base)}: {listed}")


def iterations(e: Evidence) -> Verdict:
    """The same runs at 3/4 of their iterations are within 15% of their final fd_flowers."""
    final, early = e.values(A1, "fd_flowers"), e.values(A1 + SNAPSHOT_MARK, "fd_flowers")
    return decide([equivalent(early, final, 0.15)],
                  f"fd_flowers at 3/4 of the iterations {spread(early)}, at the end {spread(final)}")


def d_scores(e: Evidence) -> Verdict:
    """Architecture 1's D(x) and D(G(z)) lie between 0.1 and 0.9, while architecture 2's D(x) sits above 0.9."""
    real1, fake1, real2 = (e.values(A1, "d_real_train_mean"), e.values(A1, "d_fake_mean"),
                           e.values(A2, "d_real_train_mean"))
    return decide([above(real1, 0.1), below(real1, 0.9), above(fake1, 0.1), below(fake1, 0.9), above(real2, 0.9)],
                  f"arch1 D(x) {spread(real1)}, D(G(z)) {spread(fake1)}; arch2 D(x) {spread(real2)} "
                  f"(training images, scored as trained); held-out D(x) arch1 "
                  f"{spread(e.values(A1, 'd_real_holdout_mean'))}, arch2 {spread(e.values(A2, 'd_real_holdout_mean'))}")


def sharpening(e: Evidence) -> Verdict:
    """Decaying instance noise gives edges closer to the photos' (edge distance: blur, noise and checkerboards
    all raise it) and no worse fd_flowers."""
    edge_on, edge_off = e.values(A1, "edge_distance"), e.values("arch1-no-sharpening", "edge_distance")
    fd_on, fd_off = e.values(A1, "fd_flowers"), e.values("arch1-no-sharpening", "fd_flowers")
    # "No worse" holds unless decaying noise is worse beyond the spread.
    return decide([lower(edge_on, edge_off), negated(higher(fd_on, fd_off), unsure=YES)],
                  f"edge distance to the photos' (0 = like them) with decaying noise {spread(edge_on, 3)}, without "
                  f"{spread(edge_off, 3)}; fd_flowers {spread(fd_on)} vs {spread(fd_off)}")


def flowers102(e: Evidence) -> Verdict:
    """Which architecture wins by fd_flowers differs between Flowers-17 and Flowers-102."""
    f17 = lower(e.values(A1, "fd_flowers"), e.values(A2, "fd_flowers"))
    f102 = lower(e.values("f102-color-arch1", "fd_flowers"), e.values("f102-color-arch2", "fd_flowers"))
    said = (f"arch1 better than arch2: Flowers-17 {f17.outcome}, Flowers-102 {f102.outcome} "
            f"[{f17.said}; {f102.said}]")
    deciding = min((f17, f102), key=lambda t: t.distance)
    if UNSURE in (f17.outcome, f102.outcome):
        return Verdict(INCONCLUSIVE, said, deciding.fragile, deciding.margin)
    return Verdict(SUPPORTED if f17.outcome != f102.outcome else NOT_SUPPORTED, said, deciding.fragile,
                   deciding.margin)


def learns_grey(*runs: str) -> Rule:
    """Every black-and-white run covers more than 10% of its photos (recall)."""
    def rule(e: Evidence) -> Verdict:
        recalls = {run: e.values(run, "recall") for run in runs}
        return decide([above(r, 0.1) for r in recalls.values()], "recall of the black-and-white runs: "
                      + ", ".join(f"{k} {spread(v)}" for k, v in recalls.items()))
    return rule


# --- the beyond study's rules: the small-data remedies against the source's architectures ---------------------------

# fd_effnet at most 70% of the source's; D(x) gap; near-duplicates at most 4× the photos' own (distinct but blurred,
# pixelated, noisy or recoloured photos read 0-3.4; one photo in a fifth of the samples 10; docs/design.md)
FD_GAIN, MAX_GAP, MAX_DUPLICATE_RATIO = 0.7, 0.2, 4.0


def memorization_gap(base: str, remedied: str, e: Evidence) -> tuple[list[Test], str]:
    """The remedy's D(x) gap (training − held-out) is below MAX_GAP and below the source setting's."""
    gap, source_gap = e.values(remedied, "d_real_gap"), e.values(base, "d_real_gap")
    return ([below(gap, MAX_GAP), lower(gap, source_gap)],
            f"D(x) train − held-out: {remedied} {spread(gap)}, {base} {spread(source_gap)}")


def fd_gain(base: str, remedied: str, e: Evidence) -> tuple[list[Test], str]:
    """The remedy's fd_effnet is below FD_GAIN × the source setting's (its seeds scaled, Welch's test)."""
    fd, source_fd = e.values(remedied, "fd_effnet"), e.values(base, "fd_effnet")
    return ([lower(fd, FD_GAIN * source_fd)], f"fd_effnet {remedied} {spread(fd, 1)}, {base} {spread(source_fd, 1)} "
                                               f"(target at most {FD_GAIN:.0%} of it)")


def no_repeated_mode_of(run: str, e: Evidence) -> tuple[list[Test], str]:
    ratio = e.values(run, "duplicate_ratio")
    return ([below(ratio, MAX_DUPLICATE_RATIO)],
            f"near-duplicate ratio of {run} {spread(ratio)} (at most {MAX_DUPLICATE_RATIO:g}; photos 1)")


def diffaug_memorization(e: Evidence) -> Verdict:
    return decide(*memorization_gap("arch1", "arch1-diffaug", e))


def diffaug_ema_quality(e: Evidence) -> Verdict:
    return decide(*fd_gain("arch1", "arch1-diffaug-ema", e))


def no_repeated_mode(e: Evidence) -> Verdict:
    return decide(*no_repeated_mode_of("arch1-diffaug-ema", e))


def lecam_adds(e: Evidence) -> Verdict:
    fd, without = e.values("arch1-diffaug-ema-lecam", "fd_effnet"), e.values("arch1-diffaug-ema", "fd_effnet")
    return decide([lower(fd, without)], f"fd_effnet with LeCam {spread(fd, 1)}, without {spread(without, 1)}")


def arch2_too(e: Evidence) -> Verdict:
    """Supported when one of the three claims is, not supported when all three are not, else inconclusive."""
    verdicts = [decide(*judge(e)) for judge in (lambda e: memorization_gap("arch2", "arch2-diffaug-ema", e),
                                                lambda e: fd_gain("arch2", "arch2-diffaug-ema", e),
                                                lambda e: no_repeated_mode_of("arch2-diffaug-ema", e))]
    said = " | ".join(f"{v.status}: {v.evidence}" for v in verdicts)
    supported = [v for v in verdicts if v.status == SUPPORTED]
    if supported:  # one robust support decides
        chosen = min(supported, key=lambda v: v.fragile)
        return Verdict(SUPPORTED, said, chosen.fragile, chosen.deciding)
    if all(v.status == NOT_SUPPORTED for v in verdicts):  # every no must hold
        chosen = max(verdicts, key=lambda v: v.fragile)
        return Verdict(NOT_SUPPORTED, said, chosen.fragile, chosen.deciding)
    undecided = [v for v in verdicts if v.status != NOT_SUPPORTED]
    chosen = max(undecided, key=lambda v: v.fragile)
    return Verdict(INCONCLUSIVE, said, chosen.fragile, chosen.deciding)


RULES: dict[str, Rule] = {
    "diffaug-memorization": diffaug_memorization, "diffaug-ema-quality": diffaug_ema_quality,
    "no-repeated-mode": no_repeated_mode, "lecam-adds": lecam_adds, "arch2-too": arch2_too,
    "collapse": collapse, "batch-size": batch_size, "mixing": no_memorization, "arch1-diversity": arch1_diversity,
    "smoothness": smoothness, "dropout": dropout, "nominal": nominal, "iterations": iterations,
    "d-scores": d_scores, "sharpening": sharpening, "flowers102": flowers102,
    "black-and-white": learns_grey("f17-gray-arch1", "f17-gray-arch2"),
    "black-and-white-102": learns_grey("f102-gray-arch1", "f102-gray-arch2"),
}

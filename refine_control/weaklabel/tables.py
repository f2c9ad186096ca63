"""Tables of docs/weaklabel.md and README's weak-label section, rendered from results/weaklabel/<experiment>/.

Registered with `refine_control.results.register_table`; `benchmarks/tables.py` imports this module, which imports
`transfer_tables.py` (the parameter-transfer tables) and `table_cells.py` (shared cells). Every cell
is computed here from the committed result files (mean ± sample std over seeds; `Δ` columns are same-seed
differences), so the docs cannot drift from the evidence. No torch import: rendering stays fast.
"""

from pathlib import Path
from typing import Any

from refine_control.results import ResultsError, Table, markdown_table, provenance, register_table
from refine_control.weaklabel.table_cells import Row, flat_rows, fmt_g, paired, pm, select, wins
from refine_control.weaklabel.transfer_tables import transfer_rows

# ---- UPLLRS ---------------------------------------------------------------------------------------------------

UPLLRS = "weaklabel/upllrs"
BASELINES = ("cc", "proden", "rc")


def _upllrs_arms(rows: list[Row]) -> list[tuple[str, dict[str, Any]]]:
    arms = [(m.upper() if m != "proden" else "PRODEN", {"method": m}) for m in BASELINES]
    for rule in ("restore", "code"):
        for g in sorted({r["gamma"] for r in rows if r["method"] == "upllrs" and r["stop_rule"] == rule}):
            label = f"UPLLRS γ={fmt_g(g)}" + (" (code stop rule)" if rule == "code" else "")
            arms.append((label, {"method": "upllrs", "gamma": g, "stop_rule": rule}))
    return arms


@register_table("weaklabel-upllrs-acc")
def upllrs_accuracy(root: Path) -> Table:
    rows, files = flat_rows(UPLLRS, root)
    arms = [(n, q) for n, q in _upllrs_arms(rows) if select(rows, **q)]
    dataset = sorted({r["dataset"] for r in rows})
    out = []
    for ds in dataset:
        for mu in sorted({r["mu"] for r in rows if r["dataset"] == ds}):
            sel = select(rows, dataset=ds, mu=mu)
            rate = pm([r["unreliable_rate"] for r in select(sel, method="proden")], 3)
            out.append([ds, fmt_g(mu), rate, *(pm([r["test_acc"] for r in select(sel, **q)]) for _, q in arms)])
    header = ["data", "μ", "unreliable rate", *(n for n, _ in arms)]
    return Table(markdown_table(header, out), provenance(files))


def _val_best(base: list[Row]) -> Row:
    return max(base, key=lambda b: (b["best_val_acc"], b["method"]))


@register_table("weaklabel-upllrs-gain")
def upllrs_gain(root: Path) -> Table:
    rows, files = flat_rows(UPLLRS, root)
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        for mu in sorted({r["mu"] for r in rows if r["dataset"] == ds}):
            sel = select(rows, dataset=ds, mu=mu)
            base_by_seed: dict[int, list[Row]] = {}
            for r in sel:
                if r["method"] in BASELINES:
                    base_by_seed.setdefault(r["seed"], []).append(r)
            for name, q in _upllrs_arms(sel)[len(BASELINES) :]:
                arm = select(sel, **q)
                vs_best = [
                    r["test_acc"] - _val_best(base_by_seed[r["seed"]])["test_acc"]
                    for r in arm
                    if r["seed"] in base_by_seed
                ]
                vs_proden = paired(arm, select(sel, method="proden"), "test_acc")
                out.append(
                    [
                        ds,
                        fmt_g(mu),
                        name,
                        pm(vs_best, signed=True),
                        wins(vs_best),
                        pm(vs_proden, signed=True),
                        wins(vs_proden),
                    ]
                )
    header = ["data", "μ", "arm", "− val-chosen baseline", "seeds > 0", "− PRODEN", "seeds > 0"]
    caption = (
        "Same-seed differences in test accuracy; the baseline is the one with the best validation accuracy in "
        "that seed. " + provenance(files)
    )
    return Table(markdown_table(header, out), caption)


@register_table("weaklabel-upllrs-separation")
def upllrs_separation(root: Path) -> Table:
    rows, files = flat_rows(UPLLRS, root)
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        for mu in sorted({r["mu"] for r in rows if r["dataset"] == ds}):
            sel = select(rows, dataset=ds, mu=mu)
            for name, q in _upllrs_arms(sel)[len(BASELINES) :]:
                arm = sorted(select(sel, **q), key=lambda r: r["seed"])
                out.append(
                    [
                        ds, fmt_g(mu), name,
                        ", ".join(f"{r['removed_fraction']:.3f}" for r in arm),
                        ", ".join(str(r["steps"]) for r in arm),
                        pm([r["precision_removed"] for r in arm], 2),
                        pm([r["unreliable_rate"] for r in arm], 3), pm([r["unreliable_left"] for r in arm], 3),
                        pm([r["fixmatch_mask_rate"] for r in arm], 2),
                    ]
                )  # fmt: skip
    header = [
        "data", "μ", "arm", "removed fraction (per seed)", "steps taken", "truly unreliable among removed",
        "unreliable rate before", "… left in D_R", "FixMatch mask rate",
    ]  # fmt: skip
    return Table(markdown_table(header, out), provenance(files))


# ---- intra-class KD -------------------------------------------------------------------------------------------

INTRA = "weaklabel/intraclass"
INTRA_ARMS = {
    "ce": "λ = 0 (control)",
    "intra-0.1": "λ = 0.1",
    "intra-1": "λ = 1",
    "intra-1-nogate": "λ = 1, no gate",
    "intra-1-nocache": "λ = 1, no cache",
}


@register_table("weaklabel-intraclass-arms")
def intraclass_arms(root: Path) -> Table:
    rows, files = flat_rows(INTRA, root)
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        sel = select(rows, dataset=ds)
        ce, scratch = select(sel, arm="ce"), select(sel, arm="scratch")
        out.append([ds, "scratch student (labels only)", "—", "—", pm([r["student_acc"] for r in scratch]), "—", "—"])
        for arm, label in INTRA_ARMS.items():
            a = select(sel, arm=arm)
            if not a:
                continue
            vs_ce = paired(a, ce, "student_acc") if arm != "ce" else []
            kd = [r["student_acc"] - s["student_acc"] for r in a for s in scratch if s["seed"] == r["seed"]]
            out.append(
                [
                    ds, label, pm([r["teacher_acc"] for r in a]), pm([r["intra_inter_ratio"] for r in a]),
                    pm([r["student_acc"] for r in a]),
                    f"{pm(vs_ce, signed=True)} ({wins(vs_ce)})" if vs_ce else "—",
                    f"{pm(kd, signed=True)} ({wins(kd)})" if kd else "—",
                ]
            )  # fmt: skip
    header = [
        "data",
        "teacher",
        "teacher acc",
        "intra/inter ratio",
        "KD student acc",
        "student − λ=0 student",
        "student − scratch",
    ]
    caption = "Test accuracy; differences are same-seed, with (seeds > 0 / seeds). " + provenance(files)
    return Table(markdown_table(header, out), caption)


@register_table("weaklabel-intraclass-selected")
def intraclass_selected(root: Path) -> Table:
    rows, files = flat_rows(INTRA, root)
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        sel = select(rows, dataset=ds)
        diffs, chosen = [], []
        for seed in sorted({r["seed"] for r in sel}):
            arms = {r["arm"]: r for r in sel if r["seed"] == seed}
            cands = [arms[a] for a in ("intra-0.1", "intra-1") if a in arms]
            if not cands or "ce" not in arms:
                continue
            best = max(cands, key=lambda r: (r["student_val_acc"], -r["lam"]))
            diffs.append(best["student_acc"] - arms["ce"]["student_acc"])
            chosen.append(fmt_g(best["lam"]))
        out.append([ds, ", ".join(chosen), pm(diffs, signed=True), wins(diffs)])
    header = ["data", "λ chosen per seed (student validation accuracy)", "test: chosen − λ = 0", "seeds > 0"]
    return Table(markdown_table(header, out), provenance(files))


GATE_EPOCHS = (1, 2, 3, 5, 10, 20)


@register_table("weaklabel-intraclass-gate")
def intraclass_gate(root: Path) -> Table:
    rows, files = flat_rows(INTRA, root)
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        for arm in ("ce", "intra-0.1", "intra-1", "intra-1-nogate"):
            a = select(rows, dataset=ds, arm=arm)
            if not a:
                continue
            n_ep = min(len(r["gate_pass_by_epoch"]) for r in a)
            epochs = [e for e in GATE_EPOCHS if e <= n_ep] + [n_ep]
            passed = " / ".join(pm([r["gate_pass_by_epoch"][e - 1] for r in a], 2).split(" ±")[0] for e in epochs)
            if arm == "intra-1-nogate":
                passed = "no gate: every anchor is used"
            early = " / ".join(pm([r["teacher_val_history"][e - 1] for r in a], 3).split(" ±")[0] for e in (1, 2, 3))
            out.append([ds, INTRA_ARMS[arm], ", ".join(map(str, epochs)), passed, early])
    header = [
        "data",
        "teacher",
        "epochs",
        "share of anchors with margin > δ = 0.5 (mean)",
        "val acc after epoch 1 / 2 / 3 (mean)",
    ]
    caption = (
        "The λ = 0 row is the control: the same gate evaluated on a teacher trained without the intra-class term. "
        + provenance(files)
    )
    return Table(markdown_table(header, out), caption)


# ---- biased soft labels ---------------------------------------------------------------------------------------

SOFT = "weaklabel/softlabel"
PRODUCER_ORDER = ("clean", "biased", "teacher", "partial", "identifiable", "noise", "incomplete")


def _settings(rows: list[Row], producer: str) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["producer"] == producer and r["setting"] not in seen:
            seen.append(r["setting"])
    return seen


@register_table("weaklabel-softlabel")
def softlabel_main(root: Path) -> Table:
    rows, files = flat_rows(SOFT, root)
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        sel = select(rows, dataset=ds)
        for producer in PRODUCER_ORDER:
            if producer == "identifiable":
                continue
            for setting in _settings(sel, producer):
                a = select(sel, producer=producer, setting=setting)
                ks = sorted({str(r["k"]) for r in a if r["k"] is not None})
                out.append(
                    [
                        ds, producer, setting, "/".join(ks) if ks else "set",
                        pm([r["delta"] for r in a], 2), pm([r["gamma"] for r in a], 2),
                        pm([r["delta_plus_gamma"] for r in a], 2), pm([r["label_top1"] for r in a], 2),
                        pm([r["acc_soft_ce"] for r in a]), pm([r["acc_topk"] for r in a]),
                    ]
                )  # fmt: skip
    header = [
        "data",
        "producer",
        "setting",
        "k (val)",
        "Δ",
        "γ",
        "Δ+γ",
        "labels' top-1",
        "soft-CE student",
        "top-k student",
    ]
    caption = (
        "k is chosen on validation soft labels (per seed; all chosen values listed); Δ, γ are measured on the "
        "training soft labels at that k (`set`: candidate sets). " + provenance(files)
    )
    return Table(markdown_table(header, out), caption)


@register_table("weaklabel-softlabel-identifiable")
def softlabel_identifiable(root: Path) -> Table:
    rows, files = flat_rows(SOFT, root)
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        for setting in _settings(select(rows, dataset=ds), "identifiable"):
            a = select(rows, dataset=ds, producer="identifiable", setting=setting)
            out.append(
                [
                    ds, setting, pm([r["delta_plus_gamma"] for r in a], 2), pm([r["min_class_margin"] for r in a], 2),
                    pm([r["acc_topk"] for r in a]), pm([r["acc_topk_even"] for r in a]), pm([r["acc_topk_odd"] for r in a]),
                    pm([r["acc_soft_ce"] for r in a]), pm([r["acc_soft_ce_odd"] for r in a]),
                ]
            )  # fmt: skip
    header = [
        "data", "candidate sets", "Δ+γ", "min over classes of P[truth] − max P[wrong]", "top-k student",
        "… even classes", "… odd classes", "soft-CE student", "… odd classes",
    ]  # fmt: skip
    return Table(markdown_table(header, out), provenance(files))


@register_table("weaklabel-softlabel-teacher")
def softlabel_teacher(root: Path) -> Table:
    rows, files = flat_rows(SOFT, root)
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        a = select(rows, dataset=ds, producer="teacher")
        clean = select(rows, dataset=ds, producer="clean")
        if not a:
            continue
        out.append(
            [
                ds, pm([r["label_top1"] for r in a]), pm([r["teacher_train_top2"] for r in a]),
                pm([r["teacher_test_top1"] for r in a]), pm([r["teacher_test_top2"] for r in a]),
                "/".join(sorted({str(r["k"]) for r in a})), pm([r["delta_plus_gamma"] for r in a], 2),
                pm([r["acc_soft_ce"] for r in a]), pm([r["acc_topk"] for r in a]), pm([r["acc_soft_ce"] for r in clean]),
            ]
        )  # fmt: skip
    header = [
        "data",
        "teacher top-1 (the images it labels)",
        "teacher top-2 (the images it labels)",
        "teacher top-1 (test)",
        "teacher top-2 (test)",
        "k (val)",
        "Δ+γ (train)",
        "soft-CE student",
        "top-k student",
        "clean-label student",
    ]
    return Table(markdown_table(header, out), provenance(files))


# ---- headline (README) ----------------------------------------------------------------------------------------

PRIMARY_GAMMA = 0.03  # the paper's choice for CIFAR-10, fixed before the runs as the UPLLRS arm of the headline


def _headline_upllrs(root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    rows, files = flat_rows(UPLLRS, root)
    cells = []
    for mu in sorted({r["mu"] for r in rows}):
        sel = select(rows, mu=mu)
        base: dict[int, list[Row]] = {}
        for r in sel:
            if r["method"] in BASELINES:
                base.setdefault(r["seed"], []).append(r)
        arm = select(sel, method="upllrs", gamma=PRIMARY_GAMMA, stop_rule="restore")
        d = [r["test_acc"] - _val_best(base[r["seed"]])["test_acc"] for r in arm if r["seed"] in base]
        if d:
            cells.append(f"μ={fmt_g(mu)}: {pm(d, signed=True)} ({wins(d)})")
    return [
        "UPLLRS (IJCAI 2023)",
        "beats PRODEN/CC/RC, more so as unreliability μ grows",
        f"UPLLRS γ={fmt_g(PRIMARY_GAMMA)} − the validation-chosen baseline, test accuracy: " + "; ".join(cells),
    ], files


def _headline_soft(root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    rows, files = flat_rows(SOFT, root)
    parts = []
    for variant in ("identifiable", "control"):
        a = [r for r in rows if r["producer"] == "identifiable" and r["setting"].startswith(variant)]
        if a:
            parts.append(
                f"{variant} sets at Δ+γ {pm([r['delta_plus_gamma'] for r in a], 2).split(' ±')[0]}: top-k student "
                f"{pm([r['acc_topk'] for r in a])}"
            )
    t = select(rows, producer="teacher")
    if t:
        parts.append(
            f"trained rank-2 teacher (top-1 {pm([r['label_top1'] for r in t]).split(' ±')[0]} on the images it labels): "
            "soft-CE student "
            f"{pm([r['acc_soft_ce'] for r in t])}, top-k student {pm([r['acc_topk'] for r in t])}"
        )
    clean = select(rows, producer="clean")
    if clean:
        parts.append(f"clean labels {pm([r['acc_soft_ce'] for r in clean])}")
    return [
        "Biased soft labels (NeurIPS 2023)",
        "learnable when Δ + γ < 1 (sufficient, not necessary)",
        "; ".join(parts),
    ], files


def _headline_intra(root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    rows, files = flat_rows(INTRA, root)
    diffs, kd = [], []
    for seed in sorted({r["seed"] for r in rows}):
        arms = {r["arm"]: r for r in rows if r["seed"] == seed}
        cands = [arms[a] for a in ("intra-0.1", "intra-1") if a in arms]
        if cands and "ce" in arms:
            best = max(cands, key=lambda r: (r["student_val_acc"], -r["lam"]))
            diffs.append(best["student_acc"] - arms["ce"]["student_acc"])
        if "ce" in arms and "scratch" in arms:
            kd.append(arms["ce"]["student_acc"] - arms["scratch"]["student_acc"])
    return [
        "Intra-class contrastive KD (arXiv 2509.22053)",
        "an intra-class teacher teaches a better student",
        f"KD (λ = 0 teacher) − scratch: {pm(kd, signed=True)} ({wins(kd)}); student of the λ chosen on validation "
        f"− student of λ = 0: {pm(diffs, signed=True)} ({wins(diffs)})",
    ], files


def _headline_transfer(root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    rows, files = transfer_rows(root)
    sel = select(rows, dataset="synthetic", n2=20, alpha=1.0)
    parts = []
    if sel:
        n1 = max(r["n1"] for r in sel)
        lo, hi = min(r["strength"] for r in sel), max(r["strength"] for r in sel)
        for u in (lo, hi):
            parts.append(f"‖u‖={fmt_g(u)}: {pm([r['gain'] for r in select(sel, strength=u, n1=n1)], signed=True)}")
        parts[0] = f"data model, α = 1, N₁ = {n1}, N₂ = 20, gain over scratch at " + parts[0]
    return [
        "Parameter transfer (arXiv 2509.22056)",
        "positive transfer with a strong shared signal, negative with a weak one",
        "; ".join(parts),
    ], files


@register_table("weaklabel-headline")
def headline(root: Path) -> Table:
    out, files = [], []
    for part, missing in (
        (_headline_upllrs, ["UPLLRS (IJCAI 2023)", "beats PRODEN/CC/RC, more so as unreliability μ grows"]),
        (_headline_soft, ["Biased soft labels (NeurIPS 2023)", "learnable when Δ + γ < 1 (sufficient, not necessary)"]),
        (_headline_intra, ["Intra-class contrastive KD (arXiv 2509.22053)", "an intra-class teacher teaches a better student"]),
        (_headline_transfer, ["Parameter transfer (arXiv 2509.22056)", "positive transfer with a strong shared signal, negative with a weak one"]),
    ):  # fmt: skip
        try:
            row, f = part(root)
        except ResultsError:  # the experiment has no result files: say so instead of dropping the paper
            row, f = [*missing, "not run: no result files (untested)"], []
        out.append(row)
        files += f
    header = ["paper", "claim tested", "the number that could have refuted it (mean ± std, seeds > 0 / seeds)"]
    return Table(markdown_table(header, out), provenance(files))

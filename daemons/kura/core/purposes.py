"""The purposes a number may be used for (利用目的). Reveal and export must
declare one of them, and it must be among those the subject allows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Purpose:
    code: str
    ja: str
    en: str


CATALOGUE: tuple[Purpose, ...] = (
    Purpose("withholding_slip", "源泉徴収票作成事務", "Withholding tax slips"),
    Purpose("salary_report", "給与支払報告書作成事務", "Salary payment reports"),
    Purpose("payment_record", "支払調書作成事務", "Payment records (支払調書)"),
    Purpose("dependents", "扶養控除等申告書作成事務", "Dependents' deduction declarations"),
    Purpose("health_pension", "健康保険・厚生年金保険届出事務", "Health insurance and pension"),
    Purpose("employment_insurance", "雇用保険届出事務", "Employment insurance"),
)

BY_CODE = {p.code: p for p in CATALOGUE}

DEFAULT_FOR_KIND: dict[str, tuple[str, ...]] = {
    "employee": (
        "withholding_slip",
        "salary_report",
        "dependents",
        "health_pension",
        "employment_insurance",
    ),
    "dependent": ("withholding_slip", "salary_report", "dependents", "health_pension"),
    "payee": ("payment_record",),
}

"""Role-matrix rows for the HA pair (see tests/role_cases/__init__.py).

From issue 11: the DA and the SA read the pair's health; only the DA asks
for a planned switchover. The shared appliance is a single one, so the DA's
switchover is judged on its merits there: refused 409 ``switchover_refused``
(reason ``single``), never 403, and audited."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support import Response
    from tests.test_role_matrix import Case, World

DA, DA_SA = frozenset({"DA"}), frozenset({"DA", "SA"})


def health(world: World, role: str | None) -> Case:
    def single(r: Response) -> None:
        assert (r.json["mode"], r.json["hasync"]) == ("single", None)

    return world.case(world.client(role), "GET", "/ha", followup=single)


def switchover(world: World, role: str | None) -> Case:
    def refused_on_its_merits(r: Response) -> None:
        assert r.error_code == "switchover_refused", r.body
        assert r.json["error"]["detail"]["reason"] == "single"

    return world.case(world.client(role), "POST", "/ha/switchover", allowed_status=409,
                      followup=refused_on_its_merits)


EXPECTED = {("GET", "/ha"): DA_SA, ("POST", "/ha/switchover"): DA}
BUILDERS = {("GET", "/ha"): health, ("POST", "/ha/switchover"): switchover}

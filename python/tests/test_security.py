"""TLS and tokens, read as the CLI reads them."""

from __future__ import annotations

import pytest

import stylefarm

from farmtools import SMALL


def test_tls_with_a_token_file(secure_farm, samples, tmp_path):
    farm, ca, files = secure_farm["farm"], secure_farm["ca"], secure_farm["token_files"]
    assert farm.url.startswith("https://")
    with stylefarm.Client(farm.url, token_file=files["submit"], tls_ca=ca) as client:
        batch = client.submit([samples["chelsea"]], [samples["retina"]], **SMALL)
        assert batch.info.owner == "py-submit"
        batch.wait(timeout=120)
        assert batch.fetch(tmp_path / "secure")
        with pytest.raises(stylefarm.PermissionDenied):
            client.workers()  # a submit token is not an admin


def test_token_from_the_environment(secure_farm, monkeypatch):
    farm, ca = secure_farm["farm"], secure_farm["ca"]
    monkeypatch.setenv("STYLEFARM_TOKEN", secure_farm["tokens"]["admin"])
    monkeypatch.setenv("STYLEFARM_TLS_CA", str(ca))
    monkeypatch.setenv("STYLEFARM_COORDINATOR", farm.url)
    with stylefarm.Client() as client:
        assert any(w.name == "secure-worker" for w in client.workers())


def test_refusals(secure_farm, tmp_path, monkeypatch):
    farm, ca = secure_farm["farm"], secure_farm["ca"]
    monkeypatch.delenv("STYLEFARM_TOKEN", raising=False)
    with stylefarm.Client(farm.url, tls_ca=ca) as client:
        with pytest.raises(stylefarm.Unauthenticated):
            client.batches()
    with stylefarm.Client(farm.url, token="sf1_not-a-real-token", tls_ca=ca) as client:
        with pytest.raises(stylefarm.Unauthenticated):
            client.batches()
    with stylefarm.Client(farm.url, token_file=secure_farm["token_files"]["worker"], tls_ca=ca) as client:
        with pytest.raises(stylefarm.PermissionDenied):
            client.batches()  # a worker token is for WorkerApi only
    with stylefarm.Client(farm.url, token_file=secure_farm["token_files"]["submit"], retry_for=0) as client:
        with pytest.raises(stylefarm.Unavailable):
            client.batches()  # the system roots do not trust the test CA
    with pytest.raises(stylefarm.InvalidArgument) as missing:
        stylefarm.Client(farm.url, token_file=tmp_path / "nope.token")
    assert missing.value.field == "token_file"
    with pytest.raises(stylefarm.InvalidArgument) as plain:
        stylefarm.Client("http://127.0.0.1:1", tls_ca=ca)
    assert plain.value.field == "tls_ca"


def test_a_quota_is_resource_exhausted_naming_it(secure_farm, samples):
    farm, ca, files = secure_farm["farm"], secure_farm["ca"], secure_farm["token_files"]
    with stylefarm.Client(farm.url, token_file=files["submit"], tls_ca=ca) as client:
        with pytest.raises(stylefarm.ResourceExhausted) as over:
            client.submit([samples["chelsea"]], [samples["retina"]], priority=101, **SMALL)
        assert "quota `priority`" in over.value.message and "..=100" in over.value.message
        assert not any(b.info.priority == 101 for b in client.batches()), "nothing was made"

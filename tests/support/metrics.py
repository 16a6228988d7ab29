"""Reading a scrape of ``/metrics`` in tests: every sample by its name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of the sample ``name`` with exactly ``labels``; a missing one fails, naming the
    samples of that name there are."""
    key = (name, frozenset(labels.items()))
    present = sorted(str(dict(found)) for (other, found) in samples if other == name)
    assert key in samples, f"no {name}{labels}; there are {present}"
    return samples[key]

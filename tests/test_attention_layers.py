"""Named layer selections of the word maps: "all" and DAAM's convention "daam" (the UNet mid-block left out)."""

from __future__ import annotations

import numpy as np
import pytest

from explainer.tracing.attention import resolve_layers


def test_daam_leaves_out_exactly_the_mid_block(basic_trace):
    every = basic_trace.attention_layers
    mid = [la for la in every if la.name.startswith("mid_block.")]
    assert mid, "the tiny UNet has a cross-attention mid-block"
    chosen = resolve_layers(basic_trace, "daam")
    assert [la.name for la in chosen] == [la.name for la in every if la not in mid]
    assert resolve_layers(basic_trace, "all") == list(every)


def test_daam_map_is_the_map_of_the_other_layers(basic_trace):
    others = [la.index for la in basic_trace.attention_layers if not la.name.startswith("mid_block.")]
    daam = basic_trace.heatmap("cube", layers="daam")
    np.testing.assert_array_equal(daam, basic_trace.heatmap("cube", layers=others))
    assert not np.allclose(daam, basic_trace.heatmap("cube", layers="all"), atol=1e-3)


def test_default_layers_are_named(basic_trace):
    from explainer.tracing.attention import DEFAULT_LAYERS

    np.testing.assert_array_equal(basic_trace.heatmap("sphere"), basic_trace.heatmap("sphere", layers=DEFAULT_LAYERS))


def test_unknown_layer_name_lists_the_conventions(basic_trace):
    with pytest.raises(ValueError, match="'daam'"):
        basic_trace.heatmap("cube", layers="middle")


def test_views_pass_daam_through(basic_trace):
    from explainer.views.tokens import token_heat

    np.testing.assert_array_equal(token_heat(basic_trace, "cube", None, "daam"), basic_trace.heatmap("cube", layers="daam"))


def test_explorer_offers_daam_and_draws_it(basic_trace):
    from explainer.widgets import Explorer

    w = Explorer(basic_trace)
    assert w.layer_options[:2] == ["all", "daam"]
    w.layer_filter = "daam"
    assert w._map_args()[1] == "daam"

"""Explanations for cardiomegaly classifiers: captum attributions, outcome-group galleries,
heart-mask localisation scores, deletion/insertion faithfulness and randomisation sanity checks.

captum, matplotlib, OpenCV and scipy are imported inside the functions that need them, so importing
this package stays cheap for the CLI.
"""
from cxrssl.explain.attributions import (METHODS, SIGNED_METHODS, PositiveScore, compute_all,
                                         compute_attributions, is_signed, occlusion_geometry, resolve_layer)
from cxrssl.explain.faithfulness import (baseline_probability, deletion_insertion_auc, deletion_insertion_curves,
                                         faithfulness_scores)
from cxrssl.explain.geometry import (choose_layer, ctr_region, oracle_map, prior_map, scaled_tolerance, stage_grids,
                                     wilson_interval)
from cxrssl.explain.localisation import (energy_inside, has_mask, localisation_scores, mask_area_share,
                                         pointing_game)
from cxrssl.explain.render import draw_overlay, render_grid, render_image_row
from cxrssl.explain.run import resolve_explain_layer, run_explanations
from cxrssl.explain.sanity import randomisation_sanity, reference_maps, reinitialise, sanity_mode, sanity_table
from cxrssl.explain.scoring import score_image, summarise_faithfulness, summarise_localisation
from cxrssl.explain.selection import GROUP_OUTCOMES, outcome_group, select_groups, select_ids

__all__ = [
    "METHODS", "SIGNED_METHODS", "PositiveScore", "compute_all", "compute_attributions", "is_signed",
    "occlusion_geometry", "resolve_layer", "deletion_insertion_auc", "deletion_insertion_curves", "energy_inside",
    "has_mask", "localisation_scores", "mask_area_share", "pointing_game", "draw_overlay", "render_grid",
    "render_image_row", "run_explanations", "summarise_localisation", "randomisation_sanity", "reinitialise",
    "sanity_table", "GROUP_OUTCOMES", "outcome_group", "select_groups", "select_ids", "baseline_probability",
    "faithfulness_scores", "choose_layer", "ctr_region", "oracle_map", "prior_map", "scaled_tolerance", "stage_grids",
    "wilson_interval", "resolve_explain_layer", "reference_maps", "sanity_mode", "score_image",
    "summarise_faithfulness",
]

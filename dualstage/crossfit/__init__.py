"""Cross-fitted evaluation over every study (the primary comparison).

K patient-grouped, stratified folds cover all studies; each fold is a test fold once. For the
studies of fold k: the segmenter is fold model k (never trained on fold k; its epoch chosen on an
inner validation carved from its own training folds), the operating points are chosen on the
other folds' out-of-fold maps (:mod:`dualstage.crossfit.rules`), and the XGBoost classifier and
its gate threshold are fitted on the other folds' out-of-fold features
(:mod:`dualstage.crossfit.classifier`). Every choice records the study ids it was fitted on.
"""

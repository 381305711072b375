"""Pure functions: numbers from tensors and text, no files, no models loaded.

    losses          next-token cross-entropy over a token array, whole-split evaluation results
    attention       entropy, span, head diversity, layer similarity of attention maps
    text_quality    distinct-n, repetition and coherence of generated text
    correlation     Pearson and Spearman correlations with p-values
    spread          a mean with its n and standard deviation, non-numbers counted as left out
    heads           head detectors, induction losses, in-context-learning score
    matrices        norms, effective rank, condition number, Gini and Hoyer sparsity of a matrix
    similarity      linear and debiased CKA, SVCCA, PWCCA between two sets of activations
    dynamics        a parameter's layer, probe gradients, the statistics tracked in training
"""

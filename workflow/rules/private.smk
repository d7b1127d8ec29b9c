rule private_classifier:
    """The paper's privately evaluable classifier (DE-Capsnet §3.5, docs/privacy.md): mean b,
    projection B and class templates from one fold's training faces, plus its plaintext test
    accuracy. Not part of `all`: request its classifier.npz by path."""
    input:
        faces=path(paths.FACES_ARRAY),
        folds=path(paths.FOLDS),
    output:
        model=path(paths.PRIVATE_MODEL),
        accuracy=path(paths.PRIVATE_ACCURACY),
    log:
        log_path("private_classifier", "{dataset}/{protocol}/fold{fold}"),
    benchmark:
        benchmark_path("private_classifier", "{dataset}/{protocol}/fold{fold}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/private_classifier.py"

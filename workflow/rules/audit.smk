rule audit:
    """Near-duplicate leak audit of one (dataset, protocol): per fold, the test faces
    whose nearest training face is within the protocol's dHash distance."""
    input:
        faces=path(paths.FACES_ARRAY),
        tested=tested_faces_array,
        folds=path(paths.FOLDS),
    output:
        audit=path(paths.AUDIT),
        pairs=report(
            path(paths.AUDIT_PAIRS),
            caption="../report/audit_pairs.rst",
            category="Leak audit",
            subcategory="{dataset} {protocol}",
        ),
    log:
        log_path("audit", "{dataset}/{protocol}"),
    benchmark:
        benchmark_path("audit", "{dataset}/{protocol}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        distance=lambda wildcards: config["protocols"][wildcards.protocol][
            "duplicate_distance"
        ],
    script:
        "../scripts/audit.py"

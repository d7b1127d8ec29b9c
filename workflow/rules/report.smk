rule report:
    """One self-contained HTML report and a flat metrics file for `dvc metrics show`.

    The report finds each study's explain-stage figures beside its summary.json, and its
    (dataset, protocol)'s statistics and leak audit one folder up."""
    input:
        summaries=paths.summaries(config),
        explanations=paths.explanations(config),
        statistics=paths.per_protocol(paths.STATISTICS, config),
        audits=paths.per_protocol(paths.AUDIT, config),
        detections=[
            path(paths.DETECTION, dataset=d) for d in paths.study_datasets(config)
        ],
        samples=[
            path(template, dataset=d)
            for d in paths.study_datasets(config)
            for template in (paths.FACES_SAMPLES, paths.LANDMARKS_SAMPLES)
        ],
    output:
        html=report(
            path(paths.REPORT),
            caption="../report/report.rst",
            category="ferbench report",
        ),
        metrics=path(paths.STUDY_METRICS),
    log:
        log_path("report", "report"),
    benchmark:
        benchmark_path("report", "report")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        benchmarks=path(paths.BENCHMARK_DIR),
        # The report prints the effective config, so any change to it is a change here.
        study_config=config,
    script:
        "../scripts/report.py"

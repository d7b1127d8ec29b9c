rule fetch:
    """Generate the synthetic dataset, or download (sha256-checked) and safely extract one."""
    output:
        directory(path(paths.RAW)),
    log:
        log_path("fetch", "{dataset}"),
    benchmark:
        benchmark_path("fetch", "{dataset}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        dataset=dataset_config,
        seed=config["seed"],
    script:
        "../scripts/fetch.py"


rule ingest:
    """Read the native layout through its adapter into the manifest; quarantine what is unusable."""
    input:
        raw=raw_input,
    output:
        manifest=path(paths.MANIFEST),
        quarantine=path(paths.INGEST_QUARANTINE),
    log:
        log_path("ingest", "{dataset}"),
    benchmark:
        benchmark_path("ingest", "{dataset}")
    conda:
        "../envs/ferbench.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        dataset=dataset_config,
    script:
        "../scripts/ingest.py"

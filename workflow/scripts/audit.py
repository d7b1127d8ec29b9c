from ferbench import jobs
from ferbench.snakemake_io import logged

with logged(snakemake):
    found = jobs.audit_study(
        snakemake.input.faces,
        snakemake.input.tested,
        snakemake.input.folds,
        snakemake.params.distance,
        snakemake.output.audit,
        snakemake.output.pairs,
    )
    print(
        f"{found['near_duplicates']} of {found['test_faces']} test faces within "
        f"{found['max_distance']} bits of a training face ({found['dropped']} dropped)"
    )

# One offline HTML page of every seed's knowledge neurons and SAE features.
rule browser:
    input:
        unpack(browser_inputs),
    output:
        page=report(
            "results/browser/index.html",
            caption="../report/browser.rst",
            category="Browser",
        ),
    log:
        "results/logs/browser.log",
    benchmark:
        "results/benchmarks/browser.tsv"
    conda:
        "../../envs/kneurons.yaml"
    threads: 1
    resources:
        gpu=1 if config["browser"]["device"].startswith("cuda") else 0,
    params:
        settings=params(step_settings.browser_params(config), "browser"),
    script:
        "../scripts/browser.py"

"""Studies: one TOML file that trains models and runs the probes on them, in order.

    spec       the study file: its format, load_study (reading and checking it)
    plan       Study: what a study file says, its runs (RunSpec) and their configs
    registry   what a step is (Step) and what it is given when it runs (StepContext)
    steps/     one module per step, registered in steps/__init__.py in the order they run
    runner     run_study: the steps into one folder, restartable; its README.md and report
"""

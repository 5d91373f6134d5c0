"""The commands: the recipes' command line and the commands that are functions.

    cli.py         AlignCLI + run(): the LightningCLI every recipe runs (fit, validate; inputs checked before the model
                   loads; messages a person reads); run_function() for the function commands
    evaluation.py  evaluate: the trained policy against the model it started from, on held-out data (the DataModules,
                   the sampling, rewards and tools groups)
    report.py      the evaluation's numbers from its records (win rate, reward, length, perplexity), its console
                   table and files
    generation.py  generate: completions of a prompt file, or of prompts typed at a terminal
    plot.py        one logged scalar of a run as an SVG
"""

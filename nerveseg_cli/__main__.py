from nerveseg_cli.cli import main

main()

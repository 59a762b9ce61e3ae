from unclip.cli.main import main

main()

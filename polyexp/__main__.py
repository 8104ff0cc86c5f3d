from polyexp.cli import main

main()

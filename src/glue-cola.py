"""Fine-tune on GLUE CoLA with LoRA or AdaLoRA: python src/glue-cola.py --help"""

from adarank.pipeline import main

if __name__ == "__main__":
    main("cola")

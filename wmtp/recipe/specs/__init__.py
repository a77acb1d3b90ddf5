"""The recipe's sections, one module per area; ``wmtp.recipe.schema`` assembles them."""
